"""The benchmark behind the README's Performance section (`make bench`); not a test."""
