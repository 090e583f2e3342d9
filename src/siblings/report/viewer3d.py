"""A rotatable 3D view of label maps for the HTML reports: WebGL, offline, no library.

:func:`viewer_html` returns one ``<div>`` with a canvas per map and a small hand-written
WebGL program: the multi-label surface of each map (:func:`siblings.mesh.surfaces.
surface_nets`, world mm) is embedded in the page as base64 arrays (vertices as int16 in
units of 0.01 mm, triangles, the two labels of each face), and each tissue is drawn as
its closed surface in the label colours of :data:`siblings.anatomy.COLOURS`. Dragging
rotates every view together (the maps share one camera, so they are seen from the same
side), the wheel zooms, a double click goes back to the first view (anterior when the
maps are in a patient's world; see ``start_view``), and a check box
per tissue hides it (which opens the hearts to show the interfaces inside). Nothing is
fetched: the page opens from disk, without a server or network.

The page records what happened in the container's ``data-status`` (``ok``, ``no-webgl``
or ``error: …``) and ``data-drawn`` (the share of pixels the first view painted), which
the tests read in headless Chromium.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import numpy as np

from .. import anatomy
from ..mesh.surfaces import DEFAULT_ITERATIONS, surface_nets
from . import html as H

_UNIT_MM = 0.01  # vertex quantisation: int16 steps of 0.01 mm cover ±327 mm


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def surface_payload(labels: np.ndarray, affine: np.ndarray, iterations: int) -> dict:
    """One map's surface as the viewer reads it (base64 little-endian arrays)."""
    s = surface_nets(labels, affine, iterations=iterations)
    if not len(s.triangles):
        return {"n": 0}
    centre = (s.points.max(axis=0) + s.points.min(axis=0)) / 2.0
    q = np.rint((s.points - centre) / _UNIT_MM)
    if np.abs(q).max() > 32767:
        raise ValueError("a surface spans more than ±327 mm: not a heart on a model grid")
    index32 = len(s.points) >= 65536
    return {
        "n": len(s.triangles),
        "centre": [round(float(c), 3) for c in centre],
        "unit": _UNIT_MM,
        "points": _b64(q.astype("<i2")),
        "index32": index32,
        "triangles": _b64(s.triangles.astype("<u4" if index32 else "<u2")),
        "labels": _b64(s.labels.astype(np.uint8)),
    }


def viewer_html(
    maps: Sequence[tuple[str, np.ndarray]],
    affine: np.ndarray,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    caption: str = "",
    start_view: str = "anterior view",
) -> str:
    """A self-contained 3D view of ``maps`` (title, label array) on one grid (``affine``).

    Parameters
    ----------
    maps : (title, 3D label array) pairs, e.g. the twin then some siblings.
    affine : voxel-to-world matrix (mm) of every map.
    iterations : Taubin smoothing passes of the surfaces.
    caption : text under the views.
    start_view : the name of the first view (looking along −y of the world, +z up, +x to
        the left), which a double click returns to: ``"anterior view"`` when ``affine``
        maps to the patient's RAS+ world (a scan's), something else (``"first view"``)
        for a model grid, whose world is the prepared frame
        (:mod:`siblings.report.axes`).

    Returns
    -------
    str
        HTML (a ``<div>``, its style and its script) to put in a report section.
    """
    payload = {
        "maps": [
            {"title": str(title), **surface_payload(np.asarray(lab), affine, iterations)}
            for title, lab in maps
        ],
        "tissues": [
            {"value": anatomy.LABELS[t], "name": t, "colour": list(anatomy.COLOURS[t])}
            for t in anatomy.TISSUES
        ],
    }
    data = json.dumps(payload, separators=(",", ":"))
    view_name = "".join(c for c in start_view if c not in "'\\<>")  # inside a JS string
    script = _JS.replace("double click: anterior view", f"double click: {view_name}")
    cap = f"<figcaption>{H.esc(caption)}</figcaption>" if caption else ""
    return (
        f"<style>{_CSS}</style>\n"
        '<figure class="view3d" id="view3d" data-status="loading" data-drawn="0">'
        '<div class="view3d-controls"></div><div class="view3d-grid"></div>'
        f"{cap}</figure>\n"
        f'<script type="application/json" id="view3d-data">{data}</script>\n'
        f"<script>{script}</script>\n"
    )


_CSS = """
.view3d-grid{display:flex;flex-wrap:wrap;gap:8px}
.view3d-cell{display:flex;flex-direction:column;align-items:center;font-size:13px}
.view3d canvas{width:260px;height:260px;border:1px solid #ccc;background:#fff;cursor:grab;
  touch-action:none}
.view3d-controls{margin:4px 0 8px 0;font-size:13px}
.view3d-controls label{margin-right:10px}
.view3d-swatch{display:inline-block;width:10px;height:10px;margin-right:3px;border:1px solid #888}
"""

# One WebGL program for every canvas. Each tissue is its own draw call (de-indexed
# triangles with the tissue's own vertex normals), so a tissue can be hidden on its own.
_JS = r"""
(function(){
'use strict';
var root=document.getElementById('view3d');
function fail(msg){root.setAttribute('data-status','error: '+msg);}
window.addEventListener('error',function(e){fail(String(e.message||e));});
try{
var D=JSON.parse(document.getElementById('view3d-data').textContent);
function bytes(b64){var s=atob(b64),a=new Uint8Array(s.length);
  for(var i=0;i<s.length;i++)a[i]=s.charCodeAt(i);return a.buffer;}
var VS='attribute vec3 p;attribute vec3 n;uniform mat3 R;uniform float k;uniform vec2 asp;'+
  'varying float shade;void main(){vec3 q=R*p;gl_Position=vec4(q.x*k*asp.x,q.y*k*asp.y,-q.z*k*0.5,1.0);'+
  'vec3 m=normalize(R*n);shade=0.25+0.75*abs(dot(m,normalize(vec3(-0.35,0.45,0.82))));}';
var FS='precision mediump float;uniform vec3 c;varying float shade;'+
  'void main(){gl_FragColor=vec4(c*shade,1.0);}';
// Anterior view (RAS): screen right = patient's left (-x), up = +z, towards the viewer = +y.
var R0=[-1,0,0, 0,0,1, 0,1,0];
var state={R:R0.slice(),zoom:1.0};
var hidden={};
function mul(a,b){var r=new Array(9);for(var i=0;i<3;i++)for(var j=0;j<3;j++){
  r[3*i+j]=a[3*i]*b[j]+a[3*i+1]*b[3+j]+a[3*i+2]*b[6+j];}return r;}
function rot(ax,ang){var c=Math.cos(ang),s=Math.sin(ang);
  return ax==='x'?[1,0,0,0,c,-s,0,s,c]:[c,0,s,0,1,0,-s,0,c];}
function tissueArrays(m,value){
  // Per-vertex normals of this tissue's surface (area-weighted face normals), so the
  // smoothed surface is shaded smoothly; faces are then de-indexed for drawArrays.
  var P=new Int16Array(bytes(m.points)),L=new Uint8Array(bytes(m.labels));
  var T=m.index32?new Uint32Array(bytes(m.triangles)):new Uint16Array(bytes(m.triangles));
  var N=new Float32Array(P.length),faces=[],f,k;
  for(f=0;f<m.n;f++){
    var front=L[2*f]===value,back=L[2*f+1]===value;if(!front&&!back)continue;
    var a=T[3*f],b=T[3*f+1],c=T[3*f+2];if(back){var t=b;b=c;c=t;}
    var e1=[P[3*b]-P[3*a],P[3*b+1]-P[3*a+1],P[3*b+2]-P[3*a+2]];
    var e2=[P[3*c]-P[3*a],P[3*c+1]-P[3*a+1],P[3*c+2]-P[3*a+2]];
    var n=[e1[1]*e2[2]-e1[2]*e2[1],e1[2]*e2[0]-e1[0]*e2[2],e1[0]*e2[1]-e1[1]*e2[0]];
    for(k=0;k<3;k++){N[3*a+k]+=n[k];N[3*b+k]+=n[k];N[3*c+k]+=n[k];}
    faces.push(a,b,c);}
  var count=faces.length,pos=new Float32Array(count*3),nor=new Float32Array(count*3),u=m.unit;
  for(var i=0;i<count;i++){var v=faces[i];
    for(k=0;k<3;k++){pos[3*i+k]=P[3*v+k]*u;nor[3*i+k]=N[3*v+k];}}
  return {pos:pos,nor:nor,count:count};}
function extent(m){var P=new Int16Array(bytes(m.points)),r=0;
  for(var i=0;i<P.length;i+=3){var d=Math.sqrt(P[i]*P[i]+P[i+1]*P[i+1]+P[i+2]*P[i+2]);if(d>r)r=d;}
  return r*m.unit;}
var views=[],radius=1;
D.maps.forEach(function(m){if(m.n)radius=Math.max(radius,extent(m));});
var grid=root.querySelector('.view3d-grid');
D.maps.forEach(function(m){
  var cell=document.createElement('div');cell.className='view3d-cell';
  var cv=document.createElement('canvas');cv.width=520;cv.height=520;
  var t=document.createElement('div');t.textContent=m.title+(m.n?'':' (no tissue)');
  cell.appendChild(cv);cell.appendChild(t);grid.appendChild(cell);
  var gl=cv.getContext('webgl',{preserveDrawingBuffer:true,antialias:true});
  if(!gl){root.setAttribute('data-status','no-webgl');return;}
  function sh(type,src){var s=gl.createShader(type);gl.shaderSource(s,src);gl.compileShader(s);
    if(!gl.getShaderParameter(s,gl.COMPILE_STATUS))throw new Error(gl.getShaderInfoLog(s));return s;}
  var pr=gl.createProgram();gl.attachShader(pr,sh(gl.VERTEX_SHADER,VS));
  gl.attachShader(pr,sh(gl.FRAGMENT_SHADER,FS));gl.linkProgram(pr);
  if(!gl.getProgramParameter(pr,gl.LINK_STATUS))throw new Error(gl.getProgramInfoLog(pr));
  var parts=[];
  if(m.n)D.tissues.forEach(function(ts){var a=tissueArrays(m,ts.value);if(!a.count)return;
    var bp=gl.createBuffer();gl.bindBuffer(gl.ARRAY_BUFFER,bp);gl.bufferData(gl.ARRAY_BUFFER,a.pos,gl.STATIC_DRAW);
    var bn=gl.createBuffer();gl.bindBuffer(gl.ARRAY_BUFFER,bn);gl.bufferData(gl.ARRAY_BUFFER,a.nor,gl.STATIC_DRAW);
    parts.push({value:ts.value,colour:ts.colour,bp:bp,bn:bn,count:a.count});});
  views.push({gl:gl,pr:pr,parts:parts,canvas:cv});
  attach(cv);});
function draw(v){var gl=v.gl;gl.viewport(0,0,v.canvas.width,v.canvas.height);
  gl.clearColor(1,1,1,1);gl.clear(gl.COLOR_BUFFER_BIT|gl.DEPTH_BUFFER_BIT);gl.enable(gl.DEPTH_TEST);
  gl.useProgram(v.pr);
  var Rt=[state.R[0],state.R[3],state.R[6],state.R[1],state.R[4],state.R[7],state.R[2],state.R[5],state.R[8]];
  gl.uniformMatrix3fv(gl.getUniformLocation(v.pr,'R'),false,Rt);
  gl.uniform1f(gl.getUniformLocation(v.pr,'k'),state.zoom/radius);
  gl.uniform2f(gl.getUniformLocation(v.pr,'asp'),1.0,1.0);
  var lp=gl.getAttribLocation(v.pr,'p'),ln=gl.getAttribLocation(v.pr,'n');
  v.parts.forEach(function(part){if(hidden[part.value])return;
    gl.uniform3f(gl.getUniformLocation(v.pr,'c'),part.colour[0]/255,part.colour[1]/255,part.colour[2]/255);
    gl.bindBuffer(gl.ARRAY_BUFFER,part.bp);gl.enableVertexAttribArray(lp);gl.vertexAttribPointer(lp,3,gl.FLOAT,false,0,0);
    gl.bindBuffer(gl.ARRAY_BUFFER,part.bn);gl.enableVertexAttribArray(ln);gl.vertexAttribPointer(ln,3,gl.FLOAT,false,0,0);
    gl.drawArrays(gl.TRIANGLES,0,part.count);});}
function drawAll(){views.forEach(draw);}
function attach(cv){var last=null;
  cv.addEventListener('pointerdown',function(e){last=[e.clientX,e.clientY];cv.setPointerCapture(e.pointerId);});
  cv.addEventListener('pointermove',function(e){if(!last)return;
    var dx=(e.clientX-last[0])*0.01,dy=(e.clientY-last[1])*0.01;last=[e.clientX,e.clientY];
    state.R=mul(rot('x',dy),mul(rot('y',dx),state.R));drawAll();});
  cv.addEventListener('pointerup',function(){last=null;});
  cv.addEventListener('wheel',function(e){e.preventDefault();
    state.zoom*=Math.exp(-e.deltaY*0.001);drawAll();},{passive:false});
  cv.addEventListener('dblclick',function(){state.R=R0.slice();state.zoom=1;drawAll();});}
var controls=root.querySelector('.view3d-controls');
D.tissues.forEach(function(ts){var lb=document.createElement('label');
  var cb=document.createElement('input');cb.type='checkbox';cb.checked=true;
  cb.addEventListener('change',function(){hidden[ts.value]=!cb.checked;drawAll();});
  var sw=document.createElement('span');sw.className='view3d-swatch';
  sw.style.background='rgb('+ts.colour.join(',')+')';
  lb.appendChild(cb);lb.appendChild(sw);lb.appendChild(document.createTextNode(ts.name));
  controls.appendChild(lb);});
controls.appendChild(document.createTextNode(' drag: rotate all · wheel: zoom · double click: anterior view'));
drawAll();
if(views.length&&root.getAttribute('data-status')==='loading'){
  var gl=views[0].gl,w=views[0].canvas.width,h=views[0].canvas.height,px=new Uint8Array(w*h*4),painted=0;
  gl.readPixels(0,0,w,h,gl.RGBA,gl.UNSIGNED_BYTE,px);
  for(var i=0;i<px.length;i+=4)if(px[i]<250||px[i+1]<250||px[i+2]<250)painted++;
  root.setAttribute('data-drawn',(painted/(w*h)).toFixed(4));
  root.setAttribute('data-status','ok');}
}catch(err){fail(String(err&&err.message||err));}
})();
"""
