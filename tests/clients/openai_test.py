"""The official `openai` Python package against chatfleet's /v1/chat/completions.

Run by python.test.mjs, which starts the system and passes the gateways' URLs in CHATFLEET_URL
and CHATFLEET_TIGHT_URL. Prints one line per test, "ok <name>" or "not ok <name>: <why>".
"""

import json
import os
import sys
import time
import traceback
import urllib.request

import openai

URL = os.environ["CHATFLEET_URL"]
TIGHT_URL = os.environ["CHATFLEET_TIGHT_URL"]
MAX_TOKENS = int(os.environ["CHATFLEET_DEMO_MAX_TOKENS"])


def client(base=URL):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused-in-dev-mode", max_retries=0)


def stored_answer(session, turn, deadline_s=15):
    """Polls the session's snapshot until the turn's answer is stored."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with urllib.request.urlopen(f"{URL}/v1/sessions/{session}/events", timeout=5) as r:
            snap = json.load(r)["snapshot"]
        for m in snap["messages"]:
            if m["role"] == "assistant" and m["turn_id"] == turn:
                return m
        time.sleep(0.05)  # a poll interval, with a deadline
    raise AssertionError(f"no stored answer for {turn}")


def resume_events(session, epoch, seq):
    """The turn's events after its user message, read the way a client that lost the stream
    resumes: the long-poll route with the seq and epoch from the response headers."""
    url = f"{URL}/v1/sessions/{session}/events?after={seq}&epoch={epoch}&wait_ms=1000"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["events"]


def test_streamed_and_whole_answers_are_equal_with_usage_and_resumable_by_headers():
    messages = [{"role": "user", "content": "Explain chatfleet in one line"}]
    with client().chat.completions.with_streaming_response.create(
        model="demo", messages=messages, stream=True, stream_options={"include_usage": True}
    ) as resp:
        headers = resp.headers
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices == [], last
    assert last.usage.completion_tokens == MAX_TOKENS, last.usage
    assert last.usage.total_tokens == last.usage.prompt_tokens + MAX_TOKENS
    assert chunks[-2].choices[0].finish_reason == "stop"

    whole = client().chat.completions.create(model="demo", messages=messages)
    assert whole.choices[0].message.content == text, (whole.choices[0].message.content, text)
    assert whole.usage.completion_tokens == MAX_TOKENS

    session, turn = headers["x-chatfleet-session"], headers["x-chatfleet-turn"]
    events = resume_events(session, headers["x-chatfleet-epoch"], headers["x-chatfleet-seq"])
    replayed = "".join(e["text"] for e in events if e["type"] == "delta" and e["turn_id"] == turn)
    assert replayed == text, (replayed, text)
    assert stored_answer(session, turn)["text"] == text


def test_closing_the_stream_cancels_the_turn_and_a_new_request_works_at_once():
    raw = client().chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "a long answer please"}], stream=True
    )
    session, turn = raw.headers["x-chatfleet-session"], raw.headers["x-chatfleet-turn"]
    stream = raw.parse()
    got = ""
    for c in stream:
        got += (c.choices[0].delta.content or "") if c.choices else ""
        if got:
            break
    stream.close()
    nxt = client().chat.completions.create(model="demo", messages=[{"role": "user", "content": "next"}])
    assert nxt.choices[0].finish_reason == "stop"
    assert nxt.usage.completion_tokens == MAX_TOKENS
    stored = stored_answer(session, turn)
    assert stored["status"] == "cancelled", stored
    assert stored["text"].startswith(got)


def test_a_quota_refusal_is_a_rate_limit_error_with_retry_after():
    c = client(TIGHT_URL)
    # The tight tenant may have one turn in flight: hold one open, then ask for another.
    held = c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "one"}], stream=True)
    chunks = iter(held)
    next(chunks)
    try:
        c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "two"}])
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.body["code"] == "quota_exceeded", e.body
        assert int(e.response.headers["retry-after"]) > 0
    else:
        raise AssertionError("a second turn in flight was accepted")
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop", "the held turn still ends normally"


def test_a_bad_request_is_a_bad_request_error():
    try:
        client().chat.completions.create(model="demo", messages=[{"role": "assistant", "content": "no user"}])
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert "user" in e.message
    else:
        raise AssertionError("accepted a request without a user message")


def main():
    failed = 0
    for name, fn in list(globals().items()):
        if not name.startswith("test_"):
            continue
        try:
            fn()
            print(f"ok {name}", flush=True)
        except Exception:
            failed += 1
            why = traceback.format_exc().strip().replace("\n", " | ")
            print(f"not ok {name}: {why}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
