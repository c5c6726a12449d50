"""What one process does with one video, in process or as a gang rank: publish it (``publish``)."""
