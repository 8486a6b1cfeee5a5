"""The scheduler: claims pending jobs and runs their chains. No HTTP here."""
