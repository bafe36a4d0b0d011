# What the workflow does when a run ends, well or not.
import threading


def cancel_scheduler_timers():
    """Cancel the scheduler's pending re-evaluation timers, so Snakemake exits at once.

    Every pass of Snakemake's scheduler loop arms a one-second threading.Timer
    (its job-rate limiter, --max-jobs-per-timespan, whose shortest span is one
    second); at exit Python waits for the last one, about a second after the
    last job. When these hooks run the scheduler has finished, so the timers
    have nothing left to wake. They are found by the name of the method that
    arms them (JobScheduler._schedule_reevalutation, so spelt, in Snakemake
    9.27); where a version names it otherwise none is found, which costs that
    second and nothing else. Other timers are left alone.
    """
    for thread in threading.enumerate():
        if not isinstance(thread, threading.Timer):
            continue
        if "_schedule_reevalutation" in getattr(thread.function, "__qualname__", ""):
            thread.cancel()


onsuccess:
    cancel_scheduler_timers()


onerror:
    cancel_scheduler_timers()
