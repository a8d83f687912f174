//! Every use of git2: mirrors, fetching, checkouts and history walks.
