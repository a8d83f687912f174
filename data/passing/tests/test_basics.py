"""Tests that always pass: the healthy state of the example repository."""

import unittest


class TestBasics(unittest.TestCase):
    def test_arithmetic(self):
        self.assertEqual(2 + 2, 4)
        self.assertEqual(7 * 6, 42)

    def test_strings(self):
        self.assertEqual("continuous" + " " + "integration", "continuous integration")
        self.assertTrue("500 lines".startswith("500"))

    def test_lists(self):
        self.assertEqual(sorted([3, 1, 2]), [1, 2, 3])
        self.assertIn(2, [1, 2, 3])


if __name__ == "__main__":
    unittest.main()
