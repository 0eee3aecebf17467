"""The job record and its store, watchers, retention, the contract's view of a job."""
