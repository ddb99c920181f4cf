//! Helpers shared by the end-to-end tests: start binaries, free ports, data dirs.
