"""Object storage under every layer that reads or writes a run's files: local folders and S3 behind one store
interface (``stores``), the output's lease (``lease``), and what a slow call is waiting on (``waits``)."""
