"""The HTTP server, driven by a real client (the openai package) on 127.0.0.1, with the smoke
model and two small random adapters (tests/conftest.py's smoke_run)."""
from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.tools.serve import make_server

openai = pytest.importorskip("openai")

DRAFTS = ["The meeting on 4 May 2021 in Berlin was attended by 120 delegates.",
          "Photosynthesis converts light energy into chemical energy stored in glucose.",
          "In conclusion, it is important to note that teamwork fosters innovation.",
          "The bridge, completed in 1932, spans 503 metres across the harbour."]


@pytest.fixture(scope="module")
def served(smoke_run):
    """(server address, expected rewrites per adapter), the expectations made before serving."""
    _, h, _, _ = smoke_run
    expected = {a: h.rewrite(DRAFTS[:1], adapter=a)[0] for a in h.adapters}
    expected["singles"] = [h.rewrite([d], adapter="sft+dpo")[0] for d in DRAFTS]
    expected["own-system"] = h.rewrite(DRAFTS[:1], adapter="sft", system_prompt="Be brief.")[0]
    server = make_server(h, port=0, adapter="sft+dpo", max_body=4096, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address, expected
    server.shutdown()
    server.server_close()


def client(address):
    return openai.OpenAI(base_url=f"http://{address[0]}:{address[1]}/v1", api_key="none",
                         max_retries=0, timeout=120)


def chat(address, text, model="sft+dpo", **extra):
    reply = client(address).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], extra_body=extra)
    return reply.choices[0].message.content


def post(address, path, body: bytes, headers=None):
    conn = http.client.HTTPConnection(*address, timeout=120)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                   **(headers or {})})
    response = conn.getresponse()
    status, payload = response.status, response.read()
    conn.close()
    return status, json.loads(payload)


def test_binds_localhost_and_lists_adapters(served):
    address, _ = served
    assert address[0] == "127.0.0.1"
    ids = [m.id for m in client(address).models.list()]
    assert ids == ["base", "sft", "dpo-only", "sft+dpo"]


def test_every_adapter_per_request_without_reloading(served):
    address, expected = served
    for adapter in ("base", "sft", "dpo-only", "sft+dpo"):
        assert chat(address, DRAFTS[0], adapter=adapter) == expected[adapter]
    assert chat(address, DRAFTS[0]) == expected["sft+dpo"]  # the server's default


def test_request_may_bring_its_own_system_prompt(served):
    address, expected = served
    reply = client(address).chat.completions.create(
        model="sft", messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": DRAFTS[0]}])
    assert reply.choices[0].message.content == expected["own-system"]
    status, body = post(address, "/v1/humanize", json.dumps(
        {"text": DRAFTS[0], "adapter": "sft", "system_prompt": "Be brief."}).encode())
    assert status == 200 and body["outputs"][0]["output"] == expected["own-system"]


def test_unknown_adapter_is_a_400_listing_the_valid_ones(served):
    with pytest.raises(openai.BadRequestError, match=r"valid adapters: \['base', 'sft'"):
        chat(served[0], DRAFTS[0], adapter="merged")


def test_unknown_model_is_a_400_unless_it_names_an_adapter(served):
    with pytest.raises(openai.BadRequestError, match=r"unknown model 'gpt-4o'; valid adapters"):
        chat(served[0], DRAFTS[0], model="gpt-4o")
    assert chat(served[0], DRAFTS[0], model="sft") == served[1]["sft"]
    assert chat(served[0], DRAFTS[0], model="gpt-4o", adapter="sft") == served[1]["sft"]


def test_a_port_in_use_is_one_line_and_exit_1(served, smoke_run, monkeypatch, capsys):
    from helpers.infer import humanizer
    from helpers.tools import serve

    monkeypatch.setattr(humanizer.Humanizer, "load", classmethod(lambda cls, *a, **k: smoke_run[1]))
    assert serve.main(["--port", str(served[0][1])]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: cannot listen on 127.0.0.1:{served[0][1]} (Address already in use); "
                   f"choose another --port\n")


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"adapter": "sft"}', 400, "missing field"),
    (b'{"text": "   "}', 400, "'text' is empty"),
    (b'{"texts": ["ok", 3]}', 400, "'texts[1]' must be a string"),
    (b'{"text": "ok", "temperature": "hot"}', 400, "'temperature' must be a number"),
    (json.dumps({"text": "x" * 5000}).encode(), 413, "over the 4096-byte limit"),
])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(served, body, status, message):
    address, expected = served
    got_status, got = post(address, "/v1/humanize", body)
    assert got_status == status and message in got["error"]["message"]
    assert chat(address, DRAFTS[0]) == expected["sft+dpo"]


def test_unknown_route_is_a_404(served):
    status, body = post(served[0], "/v1/nothing", b"{}")
    assert status == 404 and "/v1/humanize" in body["error"]["message"]


def test_concurrent_requests_are_all_answered_in_their_own_order(served):
    address, expected = served
    texts = DRAFTS * 2
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        replies = list(pool.map(lambda t: chat(address, t), texts))
    assert replies == expected["singles"] * 2


def test_streaming_joins_to_the_rewrite(served):
    address, expected = served
    stream = client(address).chat.completions.create(
        model="sft+dpo", messages=[{"role": "user", "content": DRAFTS[0]}], stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert pieces and "".join(pieces).strip() == expected["sft+dpo"]
