"""rollcall_operator."""
