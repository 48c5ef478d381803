"""The loop from Python: ``largestep.track`` for runs of your own code, and the same jobs and store the
command line drives (profile, noise, recommend, autopilot) as functions returning small result objects."""
