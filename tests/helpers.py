import time


def wait_for(handle, timeout=600, until=None):
    """Poll a run until it finishes (or `until(status)` is true); returns the last status."""
    from engine import api

    deadline = time.time() + timeout
    while time.time() < deadline:
        st = api.poll(handle)
        if st.finished or (until and until(st)):
            return st
        time.sleep(0.05)
    raise AssertionError(f"run did not finish in {timeout}s; log:\n{(handle.run_dir / 'log.txt').read_text()}")


def log_of(status) -> str:
    return (status.run_dir / "log.txt").read_text()
