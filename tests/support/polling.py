"""Waiting on counters that no event carries (engine stats, a peer's packet
count): poll until they say it happened, bounded, and say what did not."""
import trio


async def poll_until(predicate, timeout: float = 5.0, what: str = "condition",
                     interval: float = 0.01):
    """``predicate()``'s first truthy value; an AssertionError naming
    ``what`` when none comes within ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not (value := predicate()):
            await trio.sleep(interval)
        return value
    raise AssertionError(f"not within {timeout} s: {what}")
