import json

import pytest

from tests.conftest import REPO, run_cli
from vidsift.pipeline.cli import main


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("curate", "scenes", "stage", "stats", "train", "sample"):
        assert command in result.stdout


def test_scenes_json_shape(videos, capsys):
    assert main(["scenes", str(videos / "cuts/test.mp4"), str(videos / "bad/crunching.mp3"), "--json"]) == 0
    good, bad = json.loads(capsys.readouterr().out)
    assert good["path"] == str(videos / "cuts/test.mp4")
    assert good["fps"] == 25.0 and good["num_frames"] == 168 and good["error"] is None
    assert len(good["cuts"]) == 2
    assert [abs(c - t) <= 2 for c, t in zip(good["cuts"], [64, 140], strict=True)] == [True, True]
    assert good["scenes"][0]["start_frame"] == 0 and good["scenes"][-1]["end_frame"] <= 168
    for s in good["scenes"]:
        assert set(s) >= {"start_frame", "end_frame", "start_s", "end_s"}
        assert s["end_s"] > s["start_s"]
    assert bad["error"].startswith("no_video_stream") and bad["cuts"] == [] and bad["scenes"] == []


def test_stage_prints_columns(videos, capsys):
    assert main(["stage", "probe", str(videos / "bad/video_90.mov"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["rotation"] == 90 and row["display_height"] == 568
    assert (
        main(["stage", "transcode", str(videos / "cuts/test.mp4"), "--set", "max_short_side=120", "--json"])
        == 0
    )
    (row,) = json.loads(capsys.readouterr().out)
    accepted = [c for c in row["clips"] if not c.get("reject_reason")]
    assert accepted and all(min(c["width"], c["height"]) <= 120 for c in accepted)
    assert accepted[0]["clip_mp4"].endswith("bytes>")


def test_user_errors_exit_2_without_traceback(tmp_path, videos):
    r = run_cli("stage", "sharpen", str(videos / "cuts/test.mp4"))
    assert r.returncode == 2 and "unknown stage 'sharpen'" in r.stderr
    r = run_cli(
        "curate",
        str(REPO / "recipes/curate/quickstart.toml"),
        "--input",
        str(tmp_path / "none"),
        "--output",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "input not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("curate", str(tmp_path / "missing.toml"), "--input", ".", "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "recipe not found" in r.stderr
    r = run_cli(
        "curate",
        str(REPO / "recipes/curate/quickstart.toml"),
        "--input",
        str(videos / "cuts"),
        "--output",
        str(tmp_path / "o"),
        "--set",
        "transcode.crf=x",
    )
    assert r.returncode == 2 and "stage transcode" in r.stderr


def test_cluster_addresses_nothing_listens_on_fail_at_once(tmp_path, videos):
    """``--address`` at a port with no Ray behind it: exit 2 with the address and the reason, in seconds."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = str(REPO / "recipes/curate/quickstart.toml")
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", "ray://no-such-host.invalid"):
        out = tmp_path / address.replace("/", "_").replace(":", "_")
        args = ["--input", str(videos / "cuts"), "--output", str(out), "--address", address]
        r = run_cli("curate", recipe, *args, timeout=60)
        assert r.returncode == 2, r.stderr
        assert f"cannot reach the Ray cluster at {address}" in r.stderr and "Traceback" not in r.stderr


def test_ray_client_retries_a_client_server_that_did_not_start(monkeypatch, capsys):
    """Ray Client starts one server process per client on the head; when that start fails the connection
    is tried again, and a cluster that keeps failing ends in one clear error."""
    import socket

    import ray

    from vidsift.pipeline import ray_session
    from vidsift.pipeline.recipe import RecipeError

    calls = []

    def flaky_init(address, **kwargs):
        calls.append(address)
        if len(calls) < 2:
            raise ConnectionAbortedError(
                "Initialization failure from server:\nRuntimeError: Starting Ray client server failed. "
                "See ray_client_server_23000.err for detailed logs."
            )

    with socket.socket() as listener:  # something listens, so only the Ray Client handshake can fail
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"ray://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setattr(ray_session.time, "sleep", lambda s: None)
        monkeypatch.setattr(ray, "init", flaky_init)
        ray_session.connect(address)
        assert calls == [address, address]
        assert "trying again (2 of 3)" in capsys.readouterr().err

        calls.clear()

        def always_fails(address, **kwargs):
            calls.append(address)
            raise ConnectionAbortedError("RuntimeError: Starting Ray client server failed.")

        monkeypatch.setattr(ray, "init", always_fails)
        with pytest.raises(
            RecipeError, match="cannot connect to the Ray cluster at ray://.*client server failed"
        ):
            ray_session.connect(address)
        assert len(calls) == ray_session.CLIENT_ATTEMPTS
