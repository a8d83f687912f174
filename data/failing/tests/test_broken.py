"""A change that breaks one test: `python3 -m unittest discover -s tests`
exits 1 once this file is in the repository."""

import unittest


def word_count(text):
    # The bug: counts separators, not words.
    return text.count(" ")


class TestBroken(unittest.TestCase):
    def test_word_count(self):
        self.assertEqual(word_count("one two three"), 3)

    def test_upper(self):
        self.assertEqual("ci".upper(), "CI")


if __name__ == "__main__":
    unittest.main()
