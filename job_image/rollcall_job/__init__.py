"""rollcall_job."""
