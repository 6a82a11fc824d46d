"""server/tarpit.py without sockets: which refusals wait, when, how long, and the cap on held connections."""
from __future__ import annotations

import asyncio

from smtpgate.abuse import replies
from smtpgate.config.load import load_text
from smtpgate.server.tarpit import FLOOD, HELD_MAX, Tarpit

HEAD = '[server.listener.smtp]\nbind = "127.0.0.1:0"\n'


class _Guard:
    def __init__(self, delay: float):
        self.settings = type("S", (), {"tarpit": delay})()


def test_the_setting_defaults_to_a_quarter_second_and_false_turns_it_off():
    assert load_text(HEAD).abuse.tarpit == 0.25
    assert load_text(HEAD + '[server.auto-ban]\ntarpit = "2s"\n').abuse.tarpit == 2.0
    assert load_text(HEAD + '[server.auto-ban]\ntarpit = false\n').abuse.tarpit == 0.0


def test_the_first_ban_refusal_of_a_loop_turn_is_immediate_the_rest_of_a_burst_wait():
    async def scenario() -> tuple[list, list, list]:
        loop = asyncio.get_running_loop()
        pit = Tarpit(rnd=lambda: 0.5)
        done: list = []
        start = loop.time()
        for i in range(3):                                     # one at a time: a turn each, all at once
            pit.refuse(_Guard(0.2), replies.BANNED, done.append, ("alone", i))
            await asyncio.sleep(0)
        alone = list(done)
        done.clear()
        # A burst: several refusals in one turn. The first goes at once, so do refusals that are not bans
        # or have no guard; the other bans wait a random part (here half) of the pause.
        pit.refuse(_Guard(0.2), replies.BANNED, lambda: done.append(("first", loop.time() - start)))
        pit.refuse(_Guard(0.2), replies.TOO_MANY_CONCURRENT, lambda: done.append(("throttle", loop.time() - start)))
        pit.refuse(None, replies.BANNED, lambda: done.append(("no guard", loop.time() - start)))
        pit.refuse(_Guard(0.2), replies.BANNED, lambda: done.append(("burst", loop.time() - start)))
        immediate = [k for k, _ in done]
        assert pit.held == 1
        await asyncio.sleep(0.3)
        return alone, immediate, done
    alone, immediate, done = asyncio.run(scenario())
    assert alone == [("alone", 0), ("alone", 1), ("alone", 2)]
    assert immediate == ["first", "throttle", "no guard"]
    assert done[-1][0] == "burst" and 0.09 <= done[-1][1] < 0.25     # 0.5 x 0.2 s, on a 3 ms grain


def test_beyond_the_cap_a_refusal_is_immediate():
    async def scenario() -> tuple[int, int, int]:
        pit = Tarpit(rnd=lambda: 1.0)
        calls = []
        for i in range(1 + HELD_MAX + 5):                      # one turn: the first at once, then the cap
            pit.refuse(_Guard(0.05), replies.BANNED, calls.append, i)
        now, held = len(calls), pit.held
        await asyncio.sleep(0.15)
        return now, held, len(calls)
    now, held, later = asyncio.run(scenario())
    assert (now, held, later) == (1 + 5, HELD_MAX, 1 + HELD_MAX + 5)


def test_past_the_flood_rate_every_ban_refusal_waits():
    async def scenario() -> tuple[int, int]:
        pit = Tarpit(rnd=lambda: 1.0)
        calls = []
        for i in range(FLOOD + 10):                            # one at a time, faster than FLOOD a second
            pit.refuse(_Guard(5.0), replies.BANNED, calls.append, i)
            await asyncio.sleep(0)
        return len(calls), pit.held
    assert asyncio.run(scenario()) == (FLOOD, 10)
