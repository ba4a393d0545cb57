"""rollcall_api."""
