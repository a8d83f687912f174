"""The fix for the change in `failing/`: same tests, correct code."""

import unittest


def word_count(text):
    return len(text.split())


class TestBroken(unittest.TestCase):
    def test_word_count(self):
        self.assertEqual(word_count("one two three"), 3)

    def test_upper(self):
        self.assertEqual("ci".upper(), "CI")


if __name__ == "__main__":
    unittest.main()
