"""The library every service shares: config, storage, auth, errors, logging and servers."""
