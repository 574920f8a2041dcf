"""The driver's vocabulary: CR shapes, names and constants, parsed in one place."""
