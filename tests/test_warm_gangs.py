"""A free gang takes a waiting video of the shape and LoRA it rendered last, never idles while a video waits,
and no video waits for ever behind others of a busier shape."""

import threading
import time

import pytest

from ditfarm.cluster.warm_gangs import MAX_PASSES, Waiter, assign, warm_key
from ditfarm.types import RowInputs

pytestmark = [pytest.mark.unit]

SMALL = ((("height", 64), ("width", 64)), "")
LARGE = ((("height", 128), ("width", 128)), "")
STYLED = ((("height", 64), ("width", 64)), "s3://loras/style.safetensors")


class Gang:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def test_the_warm_key_is_the_rows_sizes_and_lora_and_nothing_else():
    a = RowInputs("p", 1, sampler={"height": 64, "width": 64, "guidance_scale": 5.0}, extra={"lora_scale": 0.5})
    b = RowInputs("q", 2, sampler={"height": 64, "width": 64, "steps": 12}, extra={"lora": ""})
    assert warm_key(a) == warm_key(b) == SMALL  # steps size nothing a gang keeps
    frames = RowInputs("p", 1, sampler={"height": 64, "width": 64, "num_frames": 9})
    assert warm_key(frames) not in (SMALL, LARGE)
    styled = RowInputs("p", 1, sampler={"height": 64, "width": 64}, extra={"lora": STYLED[1]})
    assert warm_key(styled) == STYLED


def test_each_video_takes_the_gang_warm_for_it_and_no_gang_idles():
    small, large, fresh = Gang("small"), Gang("large"), Gang("fresh")
    last = {id(small): SMALL, id(large): LARGE}
    free = [small, large, fresh]
    waiters = [Waiter(LARGE), Waiter(STYLED), Waiter(SMALL)]
    pairs = assign(free, waiters, last)
    assert {w.key: g for w, g in pairs} == {LARGE: large, SMALL: small, STYLED: fresh} and free == []
    assert last[id(fresh)] == STYLED
    one = [Gang("one")]
    (pair,) = assign(one, [Waiter(LARGE)], {id(one[0]): SMALL})  # nothing warm: the gang does not wait
    assert pair[1].name == "one"


def test_a_video_of_a_rare_shape_is_passed_over_at_most_max_passes_times():
    gang = Gang("busy")
    last = {id(gang): SMALL}
    rare = Waiter(LARGE)
    waiters, served = [rare], 0
    while rare.gang is None:
        waiters.append(Waiter(SMALL))  # another video of the busy shape arrives each time the gang frees
        for waiter, _ in assign([gang], waiters, last):
            waiters.remove(waiter)
        served += 1
    assert served == MAX_PASSES + 1 and rare.passed == MAX_PASSES


def test_the_pool_hands_a_given_back_gang_to_the_waiting_video_of_its_shape():
    """GangPool.borrow with two videos waiting and one gang coming back: the video of the gang's last shape takes
    it, though it came second, and the other takes the next gang."""
    from ditfarm.cluster.gang import GangPool

    pool = object.__new__(GangPool)
    pool._cond, pool._stopping, pool._closed, pool._starting = threading.Condition(), False, False, 0
    first, second = Gang("first"), Gang("second")
    pool.gangs, pool._free, pool._waiters, pool.warm_hits = [first, second], [], [], 0
    pool._last_key = {id(first): LARGE, id(second): SMALL}
    got = {}

    def borrow(name, key):
        got[name] = pool.borrow(key)

    threads = [threading.Thread(target=borrow, args=("small-video", SMALL))]
    threads.append(threading.Thread(target=borrow, args=("large-video", LARGE)))
    for thread in threads:
        thread.start()
        time.sleep(0.2)  # the small video waits first
    pool.give_back(first)  # warm for the large video, which came second
    time.sleep(0.2)
    assert got == {"large-video": first}
    pool.give_back(second)
    for thread in threads:
        thread.join(5)
    assert got == {"large-video": first, "small-video": second} and pool.warm_hits == 2


def test_videos_waiting_for_a_busy_gang_sleep_instead_of_waking_one_another():
    """While every gang is busy, the videos waiting in GangPool.borrow each look for a gang once and sleep until
    one comes free: a wake-up that hands out no gang must not pass on from waiter to waiter (the driver's core
    would spin, taking the CPU the ranks render with)."""
    from ditfarm.cluster.gang import GangPool

    pool = object.__new__(GangPool)
    pool._cond, pool._stopping, pool._closed, pool._starting = threading.Condition(), False, False, 0
    busy = Gang("busy")
    pool.gangs, pool._free, pool._waiters, pool.warm_hits, pool._last_key = [busy], [], [], 0, {}
    looks = []
    real_assign = pool._assign

    def counted_assign():
        looks.append(threading.current_thread().name)
        real_assign()

    pool._assign = counted_assign
    got = []
    threads = [
        threading.Thread(target=lambda: got.append(pool.borrow(SMALL)), name=f"video-{i}", daemon=True)
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(looks) < 4 and time.monotonic() < deadline:  # each has come to wait (on a busy machine: later)
        time.sleep(0.01)
    time.sleep(0.5)
    looked = len(looks)
    if looked != 4:
        with pool._cond:  # end the waiters (GangFailure in their threads) before failing
            pool._closed = True
            pool._cond.notify_all()
    assert looked == 4, f"4 waiting videos looked for a gang {looked} times in 0.5 s"
    for served in range(1, len(threads) + 1):  # the gang comes free four times: each time one video takes it
        pool.give_back(busy)
        deadline = time.monotonic() + 5
        while len(got) < served and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(5)
    assert got == [busy] * 4
