"""Files: checkpoint folders and the Hub, atomic saving, video files."""
