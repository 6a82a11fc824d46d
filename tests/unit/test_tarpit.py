"""server/tarpit.py without sockets: which refusals wait, when, how long, and the cap on held connections."""
from __future__ import annotations

import asyncio

from smtpgate.abuse import replies
from smtpgate.config.load import load_text
from smtpgate.server.tarpit import HELD_MAX, STORM, Tarpit

HEAD = '[server.listener.smtp]\nbind = "127.0.0.1:0"\n'


class _Guard:
    def __init__(self, delay: float):
        self.settings = type("S", (), {"tarpit": delay})()


def test_the_setting_defaults_to_a_quarter_second_and_false_turns_it_off():
    assert load_text(HEAD).abuse.tarpit == 0.25
    assert load_text(HEAD + '[server.auto-ban]\ntarpit = "2s"\n').abuse.tarpit == 2.0
    assert load_text(HEAD + '[server.auto-ban]\ntarpit = false\n').abuse.tarpit == 0.0


def test_a_few_ban_refusals_are_immediate_a_storm_waits_a_random_part_of_the_pause():
    async def scenario() -> tuple[int, list, list]:
        loop = asyncio.get_running_loop()
        pit = Tarpit(rnd=lambda: 0.5)
        done: list = []
        start = loop.time()
        for _ in range(STORM):                                 # a few banned clients: refused at once
            pit.refuse(_Guard(0.2), replies.BANNED, done.append, ("quiet", 0.0))
        quiet = len(done)
        pit.refuse(_Guard(0.2), replies.TOO_MANY_CONCURRENT, lambda: done.append(("throttle", loop.time() - start)))
        pit.refuse(None, replies.BANNED, lambda: done.append(("no guard", loop.time() - start)))
        pit.refuse(_Guard(0.2), replies.BANNED, lambda: done.append(("storm", loop.time() - start)))
        immediate = [k for k, _ in done[quiet:]]
        assert pit.held == 1
        await asyncio.sleep(0.3)
        return quiet, immediate, done
    quiet, immediate, done = asyncio.run(scenario())
    assert quiet == STORM
    assert immediate == ["throttle", "no guard"]               # not a ban refusal / no guard: never held
    assert done[-1][0] == "storm" and 0.09 <= done[-1][1] < 0.25     # 0.5 x 0.2 s, on a 3 ms grain


def test_beyond_the_cap_a_refusal_is_immediate():
    async def scenario() -> tuple[int, int, int]:
        pit = Tarpit(rnd=lambda: 1.0)
        calls = []
        for i in range(STORM + HELD_MAX + 5):
            pit.refuse(_Guard(0.05), replies.BANNED, calls.append, i)
        now, held = len(calls), pit.held
        await asyncio.sleep(0.15)
        return now, held, len(calls)
    now, held, later = asyncio.run(scenario())
    assert (now, held, later) == (STORM + 5, HELD_MAX, STORM + HELD_MAX + 5)
