"""`raysearch optimize`: what to run for a requirement and an effort (`planning`), and the driver that runs it (`driver`)."""
