"""A worker process of ``vidsift select`` (``select.select_in_processes`` starts it as
``python -m vidsift.pipeline.select_worker``).

Protocol, pickles over pipes: stdin carries the task (``src``, ``dst``, ``where``, ``sql``, write settings,
cached latents), then chunks of ``(index, members)`` (``select.plan_groups``) until it closes; stdout
carries, per group, ``("group", index, moves, tally)``, then ``("chunk",)`` after each chunk, or one
``("error", kind, message)`` before the worker stops. The worker writes its files without a flush each; a
thread of its own flushes them behind it (``storage.sync_files``), and it exits once every file it wrote,
and their folders, are on the device. A separate program rather than ``multiprocessing``: a spawned
``multiprocessing`` worker first imports the caller's main script again (a script without a
``__main__`` guard, or code piped to Python, breaks it); this one imports nothing of the caller's.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import sys
import threading
import traceback


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is select_run's to handle: it stops its workers
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the result stream
    from vidsift.pipeline import storage
    from vidsift.pipeline.select import SelectError, _mask_for, _select_group, group_files

    stdin = sys.stdin.buffer
    task = pickle.load(stdin)
    written: queue.Queue = queue.Queue()  # files to flush; None: no more
    failed: list[BaseException] = []

    def flush() -> None:
        try:
            while (files := written.get()) is not None:
                storage.sync_files(files, threads=1, folders=False)
        except BaseException as e:  # reported by the main thread
            failed.append(e)

    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()
    try:
        mask_of = _mask_for(task["where"], task["sql"])
        text = task["where"] if task["where"] is not None else task["sql"]
        folders = set()
        while True:
            try:
                chunk = pickle.load(stdin)
            except EOFError:
                break
            for index, members in chunk:
                moves, group_tally = _select_group(
                    task["src"], task["dst"], members, mask_of, text, task["config"], task["latents"]
                )
                files = group_files(task["dst"], members[0])
                written.put(files)
                folders.update(os.path.dirname(str(f)) for f in files)
                pickle.dump(("group", index, moves, group_tally), results)
            pickle.dump(("chunk",), results)
            results.flush()
        written.put(None)
        flusher.join()
        if failed:
            raise failed[0]
        storage.sync_files(sorted(folders), threads=1, folders=False)
    except SelectError as e:
        pickle.dump(("error", "select", str(e)), results)
    except Exception:  # a bug: the parent raises it with this traceback
        pickle.dump(("error", "bug", traceback.format_exc()), results)
    results.flush()


if __name__ == "__main__":
    main()
