"""A test that takes a while, so that a job is still running when a test
kills a runner or the dispatcher.

It sleeps for the number of seconds written in the file `SLEEP_SECS` at the
root of the repository (a commit can change it), or 2 seconds without it.
It reads no environment variable: the same commit always sleeps as long.
"""

import os
import time
import unittest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SLEEP_SECS = 2.0


def sleep_secs():
    try:
        with open(os.path.join(REPO_ROOT, "SLEEP_SECS"), encoding="utf-8") as f:
            return max(0.0, float(f.read().strip()))
    except (OSError, ValueError):
        return DEFAULT_SLEEP_SECS


class TestSlow(unittest.TestCase):
    def test_takes_a_while(self):
        time.sleep(sleep_secs())
        self.assertTrue(True)


if __name__ == "__main__":
    unittest.main()
