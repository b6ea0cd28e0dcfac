"""The HTTP adapter: a real uvicorn server in a thread and in its own process, HTTPEnv against
local episodes, bad requests."""

from __future__ import annotations

import socket

import httpx
import pytest

from onthejob.envs import NotSupported, Task, make_env, make_tasks
from onthejob.envs.http import HTTPEnv, main, serve_in_thread
from tests.process_support import start_module
from tests.test_envs import play_script, scripted_episode


def remote_episode(env: HTTPEnv, task: Task, seed: int) -> list[object]:
    """scripted_episode, driven through HTTP (the same policy and the same script)."""
    return play_script(env, task, seed)


@pytest.fixture(scope="module", params=["arith", "shop", "program"])
def served(request: pytest.FixtureRequest):
    with serve_in_thread(make_env(request.param)) as url, HTTPEnv(url) as env:
        yield request.param, url, env


def test_metadata(served) -> None:
    name, _, env = served
    assert (env.name, env.resettable, env.replicable, env.stationary) == (name, True, True, True)


def test_episodes_through_http_equal_local_ones(served) -> None:
    name, _, env = served
    for seed, task in enumerate(make_tasks(name, "train", 3, seed=21)):
        assert remote_episode(env, task, seed) == scripted_episode(name, task.to_json(), seed)


def test_reset_by_seed_and_snapshot_restore(served) -> None:
    name, _, env = served
    local = make_env(name)
    assert env.reset(seed=5) == local.reset(seed=5)
    snap = env.snapshot()
    assert snap == local.snapshot()
    first = env.step(env.expert_action())
    assert first == local.step(local.expert_action())
    env.restore(snap)
    assert env.step(env.expert_action()) == first


def test_episode_errors_come_back_as_local_exceptions(served) -> None:
    name, _, env = served
    env.reset(seed=1)
    done = False
    while not done:
        *_, terminated, truncated, _ = env.step(env.expert_action())
        done = terminated or truncated
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("x")
    other = "shop" if name != "shop" else "arith"
    with pytest.raises(ValueError, match="task of"):
        env.reset(task=make_tasks(other, "train", 1)[0])
    with pytest.raises(ValueError, match="snapshot"):
        env.restore({"env": "chess"})


def test_bad_requests_get_4xx_with_a_message(served) -> None:
    _, url, _ = served
    with httpx.Client(base_url=url) as client:
        cases = [
            (
                "POST",
                "/step",
                {"content": b"{not json", "headers": {"content-type": "application/json"}},
                422,
            ),
            ("POST", "/step", {"json": {"action": 5}}, 422),
            ("POST", "/step", {"json": {"act": "x"}}, 422),
            ("POST", "/step", {"json": {"action": "x", "extra": 1}}, 422),
            ("POST", "/reset", {"json": {"seed": "three"}}, 422),
            ("POST", "/reset", {"json": {"task": {"id": "x"}}}, 400),
            ("POST", "/restore", {"json": {"snapshot": []}}, 422),
            ("GET", "/nowhere", {}, 404),
        ]
        for method, path, kwargs, status in cases:
            response = client.request(method, path, **kwargs)
            assert response.status_code == status, (path, kwargs, response.text)
            assert response.json()["error" if status != 404 else "detail"]


def test_step_before_reset_is_a_conflict() -> None:
    with serve_in_thread(make_env("arith")) as url:
        response = httpx.post(f"{url}/step", json={"action": "1"})
        assert response.status_code == 409 and "reset" in response.json()["error"]
        with HTTPEnv(url) as env, pytest.raises(RuntimeError, match="reset"):
            env.step("1")


def test_not_supported_crosses_http() -> None:
    class Live(type(make_env("arith"))):  # type: ignore[misc]
        resettable = False

    with serve_in_thread(Live()) as url, HTTPEnv(url) as env:
        assert env.resettable is False
        env.reset(seed=0)
        with pytest.raises(NotSupported, match="not resettable"):
            env.snapshot()


def test_requests_do_not_wait_for_delayed_acks() -> None:
    import time

    with serve_in_thread(make_env("shop")) as url, HTTPEnv(url) as env:
        env.reset(seed=0)
        times = []
        for _ in range(10):
            started = time.perf_counter()
            env.state()
            times.append(time.perf_counter() - started)
    assert min(times) < 0.02  # without TCP_NODELAY each response takes >= 40 ms


def test_unreachable_server_is_a_clear_error() -> None:
    with serve_in_thread(make_env("arith")) as url:
        pass  # the server is stopped when the block ends
    with pytest.raises(ConnectionError, match="unreachable"):
        HTTPEnv(url, timeout=2.0)


def test_the_module_serves_an_env_in_its_own_process_and_stops_cleanly_on_sigterm() -> None:
    args = ("arith", "--port", "0", "--set", "difficulty=2")
    process, url = start_module("onthejob.envs.http", *args, ready_path="/metadata")
    try:
        with HTTPEnv(url) as env:
            task = make_tasks("arith", "train", 1, seed=3, difficulty=2)[0]
            assert env.reset(task=task)[0] == make_env("arith", difficulty=2).reset(task=task)[0]
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, process.communicate()[1][-500:]


def test_the_module_refuses_a_bad_env_or_a_busy_port_in_one_line() -> None:
    with pytest.raises(SystemExit, match="env server: unknown env 'nope'; valid names"):
        main(["nope"])
    with pytest.raises(SystemExit, match="env server: unknown config .'colour'."):
        main(["arith", "--set", "colour=1"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}: "):
            main(["arith", "--port", str(port)])
