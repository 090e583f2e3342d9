"""The project's error type: library wording, CLI wording, and what the CLI maps to exit 2."""

from __future__ import annotations

import pickle

import pytest

from siblings import cli
from siblings.checkpoint import CheckpointError
from siblings.errors import InputError, OutputExistsError, SiblingsError
from siblings.io import LabelMapError


def test_the_library_names_arguments_and_the_cli_names_flags():
    err = InputError("{n_boot} must be 0 or more, got -1", arguments=("n_boot",))
    assert str(err) == "n_boot must be 0 or more, got -1"
    assert err.worded(cli.flag) == "--n-boot must be 0 or more, got -1"
    assert isinstance(err, ValueError) and isinstance(err, SiblingsError)


def test_an_argument_may_have_its_own_library_wording_and_a_per_command_flag():
    err = SiblingsError("start afresh: {resume}", arguments={"resume": "resume=False"})
    assert str(err) == "start afresh: resume=False"
    assert err.worded(lambda a: cli.flag(a, "train")) == "start afresh: --no-resume"
    assert err.worded(lambda a: cli.flag(a, "augment")) == "start afresh: --resume"


def test_existing_error_types_are_project_errors_and_keep_their_bases():
    assert issubclass(LabelMapError, SiblingsError) and issubclass(LabelMapError, ValueError)
    assert issubclass(CheckpointError, SiblingsError) and issubclass(CheckpointError, ValueError)
    assert issubclass(OutputExistsError, FileExistsError)


def test_errors_cross_process_boundaries_with_their_arguments():
    err = pickle.loads(pickle.dumps(InputError("{k} too big", arguments=("k",))))
    assert str(err) == "k too big" and err.worded(cli.flag) == "--k too big"
    lm = pickle.loads(pickle.dumps(LabelMapError("a.nii.gz", "corrupt")))
    assert str(lm) == "a.nii.gz: corrupt" and lm.reason == "corrupt"


def _evaluate_raising(exc):
    def fake(*args, **kwargs):
        raise exc

    return fake


def test_a_project_error_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    import siblings.pipelines.evaluate as pipeline

    exc = InputError("{workers} is odd", arguments=("workers",))
    monkeypatch.setattr(pipeline, "evaluate_cohort", _evaluate_raising(exc))
    code = cli.main(["evaluate", str(tmp_path), "--reference", str(tmp_path), "--out", "x"])
    assert code == 2
    assert capsys.readouterr().err == "siblings evaluate: error: --workers is odd\n"


def test_any_other_value_error_keeps_its_traceback(monkeypatch, tmp_path):
    import siblings.pipelines.evaluate as pipeline

    bug = ValueError("operands could not be broadcast together")  # e.g. a NumPy bug
    monkeypatch.setattr(pipeline, "evaluate_cohort", _evaluate_raising(bug))
    with pytest.raises(ValueError, match="broadcast"):
        cli.main(["evaluate", str(tmp_path), "--reference", str(tmp_path), "--out", "x"])


def test_library_errors_speak_of_arguments_not_flags():
    from siblings.editing import check_settings
    from siblings.pipelines.sample import check_counts

    with pytest.raises(InputError) as info:
        check_counts(0, 20, 8)
    assert str(info.value) == "n must be at least 1, got 0"
    with pytest.raises(InputError) as info:
        check_settings("local", n=1, regenerate="LV", dilate=-1)
    assert str(info.value) == "dilate must be 0 or more, got -1"
    assert info.value.worded(cli.flag) == "--dilate must be 0 or more, got -1"


def test_internal_invariants_are_plain_errors_not_user_errors():
    # A broken invariant between the library's own arrays is a bug: an ordinary
    # ValueError (traceback kept by the CLI), not an InputError worded as a user error.
    import numpy as np

    from siblings.metrics.bootstrap import acceptance_rate
    from siblings.metrics.frechet import gaussian_frechet_distance
    from siblings.metrics.topology import tv_percent

    for call in (
        lambda: acceptance_rate(3, 2),
        lambda: gaussian_frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)),
        lambda: tv_percent(np.zeros((0, 12), bool)),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert not isinstance(info.value, SiblingsError)


def test_a_label_map_error_from_a_cohort_worker_keeps_its_arguments(monkeypatch, tmp_path):
    # The worker sends the error whole: an argument in its reason stays an argument.
    import numpy as np

    import siblings.metrics.cohort as cohort
    from siblings.io import LabelMap, write_label_map

    path = tmp_path / "a.nii.gz"
    write_label_map(path, LabelMap(np.zeros((8, 8, 8), np.uint8), np.eye(4)))

    def bad(p, grid, labels=None):
        raise LabelMapError(None, "unusable; lower {k}", arguments=("k",))

    monkeypatch.setattr(cohort, "_read_on_grid", bad)
    with pytest.raises(LabelMapError) as info:
        cohort.summarise_folder(tmp_path, workers=1)
    assert str(info.value) == f"{path}: unusable; lower k"
    assert info.value.worded(cli.flag) == f"{path}: unusable; lower --k"


def test_library_texts_name_no_flags():
    from siblings.metrics.cohort import compare
    from siblings.metrics.twin import UNDEFINED_AGAINST_ONE_MAP

    assert "--" not in UNDEFINED_AGAINST_ONE_MAP and "reference" in UNDEFINED_AGAINST_ONE_MAP
    with pytest.raises(InputError) as info:
        compare(None, None, k=0)  # type: ignore[arg-type]  # k is checked first
    assert str(info.value) == "k must be at least 1, got 0"
    assert info.value.worded(cli.flag) == "--k must be at least 1, got 0"
