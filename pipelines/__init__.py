"""Definitions, jobs, schedules and sensors: the top floor; nothing imports it."""
