"""Helpers shared by the tests: imported by test modules and conftests alike;
fixtures stay in the conftests."""
