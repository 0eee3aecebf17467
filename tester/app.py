"""The Cylindria Tester window: fields, one button per endpoint and a text window of results."""

import argparse
import functools
import itertools
import logging
import os
import queue
import threading
import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import filedialog, simpledialog, ttk
from tkinter.scrolledtext import ScrolledText

from tester import format as fmt
from tester import settings as settings_mod
from tester.client import Client, Result, build_base_url
from tester.events import EventReader
from tester.fields import gpu_field, parse_priority, status_gpu
from tester.jobid import new_job_id
from tester.settings import Settings
from tester.watch import Update, Watch
from tester.workflow import load_workflow

logger = logging.getLogger(__name__)

API_KEY_ENV = "CYLINDRIA_API_KEY"
TAG_COLOURS = {fmt.HEADER: "#1f4e9c", fmt.OK: "#1b7a1b", fmt.ERROR: "#b00020", fmt.INFO: "#555555"}

Done = Callable[[str, Result], None]
Emit = Callable[[object, bool], None]  # (item, final) from a worker thread


class App:
    """One tester window; HTTP runs in worker threads whose items are drained with ``after()``."""

    DRAIN_MS = 50
    WATCH_MS = 1000

    def __init__(self, root: tk.Tk, settings: Settings | None = None, api_key: str = ""):
        self.root = root
        self.settings = settings or settings_mod.load()
        self._saved: Settings | None = None  # what this window last wrote to disk
        self.results: queue.Queue[tuple[int, str, object, bool]] = queue.Queue()
        self._callbacks: dict[int, Callable[[str, object], None]] = {}
        self._tokens = itertools.count()
        self.pending = 0
        self.last_job_id = ""
        self.watch: Watch | None = None
        self.reader: EventReader | None = None  # the watched job's event stream, while it lasts
        self._watch_after: str | None = None
        self._tail: object = None  # who wrote the last entry, so a watch's lines stay together
        self.url_var = tk.StringVar(root, self.settings.url)
        self.port_var = tk.StringVar(root, self.settings.port)
        self.gpu_var = tk.StringVar(root, self.settings.gpu_id)
        self.priority_var = tk.StringVar(root, self.settings.priority)
        self.key_var = tk.StringVar(root, api_key)
        self.show_key_var = tk.BooleanVar(root, False)
        self.watch_var = tk.StringVar(root, "No job watched")
        self.busy_var = tk.StringVar(root, "Ready")
        self.create_widgets()
        root.protocol("WM_DELETE_WINDOW", self.close)
        self._drain_after = root.after(self.DRAIN_MS, self.drain_results)

    # ---- layout -------------------------------------------------------------------------
    def create_widgets(self) -> None:
        """Lay out the window; no logic here."""
        self.root.title("Cylindria Tester")
        style = ttk.Style(self.root)
        if style.theme_use() == "default" and "clam" in style.theme_names():
            style.theme_use("clam")  # X11's default theme looks dated; Windows/macOS keep theirs
            style.configure("Horizontal.TProgressbar", background="#3a6fc4")
        self.root.minsize(760, 480)
        self.root.columnconfigure(0, weight=1)
        self.root.rowconfigure(3, weight=1)

        fields = ttk.Frame(self.root, padding=(8, 8, 8, 4))
        fields.grid(row=0, column=0, sticky="ew")
        fields.columnconfigure(1, weight=1)
        self.url_entry = labelled_entry(fields, 0, "URL", self.url_var, 32, sticky="ew")
        self.port_entry = labelled_entry(fields, 2, "Port", self.port_var, 7)
        self.gpu_entry = labelled_entry(fields, 4, "GpuId", self.gpu_var, 5)
        self.priority_entry = labelled_entry(fields, 6, "Priority", self.priority_var, 5)
        self.key_entry = labelled_entry(fields, 8, "API key", self.key_var, 24, padx=(4, 4))
        self.key_entry.configure(show="•")
        self.show_key_check = ttk.Checkbutton(fields, text="show", variable=self.show_key_var,
                                              command=self.on_toggle_key)
        self.show_key_check.grid(row=0, column=10)

        buttons = ttk.Frame(self.root, padding=(8, 4))
        buttons.grid(row=1, column=0, sticky="ew")
        self.status_button = ttk.Button(buttons, text="Server status", command=self.on_server_status)
        self.models_button = ttk.Button(buttons, text="Models", command=self.on_models)
        self.fleet_button = ttk.Button(buttons, text="Fleet", command=self.on_fleet)
        self.upload_button = ttk.Button(buttons, text="Upload asset…", command=self.on_upload_asset)
        self.start_button = ttk.Button(buttons, text="Start job…", command=self.on_start_job)
        self.job_button = ttk.Button(buttons, text="Job status…", command=self.on_job_status)
        self.watch_button = ttk.Button(buttons, text="Watch job…", command=self.on_watch_job)
        self.clear_button = ttk.Button(buttons, text="Clear", command=self.on_clear)
        row = (self.status_button, self.models_button, self.fleet_button, self.upload_button,
               self.start_button, self.job_button, self.watch_button)
        for i, button in enumerate(row):
            button.grid(row=0, column=i, padx=(0, 6))
        buttons.columnconfigure(len(row), weight=1)
        self.clear_button.grid(row=0, column=len(row) + 1, sticky="e")

        watch = ttk.Frame(self.root, padding=(8, 4))
        watch.grid(row=2, column=0, sticky="ew")
        watch.columnconfigure(0, weight=1)
        self.progress = ttk.Progressbar(watch, mode="determinate", maximum=100)
        self.progress.grid(row=0, column=0, sticky="ew", padx=(0, 8))
        self.watch_label = ttk.Label(watch, textvariable=self.watch_var, width=48)
        self.watch_label.grid(row=0, column=1, sticky="w")

        self.text = ScrolledText(self.root, wrap="word", height=24, font="TkFixedFont",
                                 state="disabled", padx=6, pady=4)
        self.text.grid(row=3, column=0, sticky="nsew", padx=8, pady=4)
        for tag, colour in TAG_COLOURS.items():
            self.text.tag_configure(tag, foreground=colour)
        self.text.tag_configure(fmt.HEADER, font="TkHeadingFont")

        ttk.Label(self.root, textvariable=self.busy_var, anchor="w", padding=(8, 0, 8, 6)).grid(
            row=4, column=0, sticky="ew")

    # ---- dialogs (tests replace these) --------------------------------------------------
    def ask_workflow_file(self) -> str | None:
        """Ask for a ComfyUI API-format workflow file; None when cancelled."""
        path = filedialog.askopenfilename(
            parent=self.root, title="ComfyUI workflow (API format)",
            filetypes=[("JSON workflow", "*.json"), ("All files", "*")])
        return path or None

    def ask_asset_file(self) -> str | None:
        """Ask for a file to upload as an asset (an input of workflows); None when cancelled."""
        path = filedialog.askopenfilename(parent=self.root, title="Asset to upload",
                                          filetypes=[("All files", "*")])
        return path or None

    def ask_job_id(self, title: str) -> str | None:
        """Ask for a job id, prefilled with the last one sent; None when cancelled."""
        return simpledialog.askstring(title, "Job ID:", parent=self.root,
                                      initialvalue=self.last_job_id)

    # ---- handlers (thin) ----------------------------------------------------------------
    def on_server_status(self) -> None:
        """Send ServerStatus for the GpuId field (all GPUs for auto)."""
        client, gpu = self.make_client("Server status"), status_gpu(self.gpu_id())
        if client:
            self.run_in_background("Server status", lambda: client.server_status(gpu), self.show_result)

    def on_models(self) -> None:
        """List the model files the GPUs' ComfyUIs can load (GET /models)."""
        client = self.make_client("Models")
        if client:
            self.run_in_background("Models", client.models, self.show_result)

    def on_fleet(self) -> None:
        """List the nodes sharing the server's database and their GPUs (GET /fleet)."""
        client = self.make_client("Fleet")
        if client:
            self.run_in_background("Fleet", client.fleet, self.show_result)

    def on_upload_asset(self) -> None:
        """Pick a file and upload it as an asset."""
        path = self.ask_asset_file()
        if path:
            self.upload_asset(path)

    def on_start_job(self) -> None:
        """Pick a workflow file and send it under a new job id."""
        path = self.ask_workflow_file()
        if path:
            self.start_job(path)

    def on_job_status(self) -> None:
        """Ask for a job id and send JobStatus."""
        job_id = self.clean_job_id(self.ask_job_id("Job status"))
        if job_id:
            self.job_status(job_id)

    def on_watch_job(self) -> None:
        """Start watching a job, or stop the current watch."""
        if self.watch:
            self.stop_watch("stopped by the operator")
            return
        job_id = self.clean_job_id(self.ask_job_id("Watch job"))
        if job_id:
            self.start_watch(job_id)

    def on_clear(self) -> None:
        """Empty the text window."""
        self.text.configure(state="normal")
        self.text.delete("1.0", "end")
        self.text.configure(state="disabled")

    def on_toggle_key(self) -> None:
        """Show or mask the API key."""
        self.key_entry.configure(show="" if self.show_key_var.get() else "•")

    # ---- commands -----------------------------------------------------------------------
    def upload_asset(self, path: str) -> None:
        """Upload the file at ``path`` as an asset, read from disk as it is sent."""
        title = f"Upload asset ({Path(path).name})"
        client = self.make_client(title)
        if client:
            self.run_in_background(title, lambda: client.upload_asset(path), self.show_asset)

    def start_job(self, path: str) -> None:
        """Send the workflow at ``path`` under a fresh job id; refuse a bad file or priority here."""
        title = f"Start job ({Path(path).name})"
        try:
            priority = parse_priority(self.priority_var.get())
            body = load_workflow(path)
        except ValueError as exc:  # a WorkflowError too
            self.append(fmt.format_note(title, f"Refused: {exc}. Nothing was sent."))
            return
        client, gpu = self.make_client(title), self.gpu_id()
        if client:
            job_id = new_job_id()
            self.last_job_id = job_id
            self.run_in_background(f"{title} as {job_id}",
                                   lambda: client.start_job(job_id, body, gpu, priority),
                                   self.show_result)

    def job_status(self, job_id: str) -> None:
        """Send JobStatus for ``job_id``."""
        client = self.make_client("Job status")
        if client:
            self.last_job_id = job_id
            self.run_in_background(f"Job status {job_id}", lambda: client.job_status(job_id),
                                   self.show_result)

    def start_watch(self, job_id: str) -> None:
        """Follow ``job_id`` until it ends: its event stream, else a poll every second."""
        self.stop_watch(None)
        self.last_job_id = job_id
        self.watch = Watch(job_id)
        self.progress.configure(value=0)
        self.watch_var.set(f"{job_id}: …")
        self.watch_button.configure(text="Stop watching")
        self.append(fmt.format_note(f"Watch job {job_id}", "following its event stream (/jobevents)",
                                    fmt.INFO), source=self.watch)
        self.follow_watch()

    def follow_watch(self) -> None:
        """Open the watched job's event stream in a reader thread."""
        watch = self.watch
        client = self.make_client(f"Watch job {watch.job_id}")
        if not client:
            self.stop_watch("stopped: fix the fields and watch again")
            return
        emit = self.listen(f"Watch job {watch.job_id}",
                           lambda title, item: self.on_stream_item(watch, item))
        self.reader = EventReader(client, watch.job_id, emit)
        self.reader.start()

    def poll_watch(self) -> None:
        """Send one JobStatus for the watched job."""
        self._watch_after = None
        if not self.watch:
            return
        client = self.make_client(f"Watch job {self.watch.job_id}")
        if not client:
            self.stop_watch("stopped: fix the fields and watch again")
            return
        watch = self.watch
        self.run_in_background(f"Watch job {watch.job_id}", lambda: client.job_status(watch.job_id),
                               lambda title, result: self.on_watch_result(watch, result))

    def on_stream_item(self, watch: Watch, item: object) -> None:
        """Apply one item of the event stream; poll instead once it is refused or drops."""
        if watch is not self.watch:
            return  # a late item of a watch that was stopped or replaced
        update = watch.stream_step(item)
        if self.show_update(watch, update) and update.poll:
            self.reader = None  # its last item was this one
            self.poll_watch()

    def on_watch_result(self, watch: Watch, result: Result) -> None:
        """Apply one poll's Result; schedule the next poll unless the watch is over."""
        if watch is not self.watch:
            return  # a late answer for a watch that was stopped or replaced
        if self.show_update(watch, watch.step(result)):
            self._watch_after = self.root.after(self.WATCH_MS, self.poll_watch)

    def show_update(self, watch: Watch, update: Update) -> bool:
        """Apply an Update to the bar, the label and the text; False once the watch is over."""
        if update.percent is not None:
            self.progress.configure(value=update.percent)
        self.watch_var.set(f"{watch.job_id}: {update.status}")
        if update.lines:
            self.append(update.lines, source=watch)
        if update.done:
            self.stop_watch(None)
        return not update.done

    def stop_watch(self, reason: str | None) -> None:
        """Stop following the job (closing its event stream); ``reason`` is shown when given."""
        if self._watch_after:
            self.root.after_cancel(self._watch_after)
            self._watch_after = None
        if self.reader:
            self.reader.stop()
            self.reader = None
        if self.watch and reason:
            self.append([(f"watch {self.watch.job_id}: {reason}", fmt.INFO)])
        self.watch = None
        self.watch_button.configure(text="Watch job…")

    # ---- plumbing -----------------------------------------------------------------------
    def gpu_id(self) -> str:
        """The GpuId field as sent: an index or auto (default 0); the server judges its validity."""
        return gpu_field(self.gpu_var.get())

    @staticmethod
    def clean_job_id(job_id: str | None) -> str | None:
        """Strip the dialog's answer; empty means cancelled."""
        return (job_id or "").strip() or None

    def make_client(self, title: str) -> Client | None:
        """A Client for the current fields (and remember them), or None after showing why not."""
        try:
            base_url = build_base_url(self.url_var.get(), self.port_var.get())
        except ValueError as exc:
            self.append(fmt.format_note(title, f"Not sent: {exc}."))
            return None
        self.remember()
        return Client(base_url, api_key=self.key_var.get().strip())

    def remember(self) -> None:
        """Save URL, port, GpuId and priority for the next run (never the API key)."""
        current = Settings(url=self.url_var.get().strip(), port=self.port_var.get().strip(),
                           gpu_id=self.gpu_var.get().strip(),
                           priority=self.priority_var.get().strip())
        if current == self._saved:
            return
        try:
            settings_mod.save(current)
        except OSError as exc:
            logger.warning("could not save settings: %s", exc)
        self.settings = self._saved = current

    def listen(self, title: str, on_item: Callable[[str, object], None]) -> Emit:
        """Register ``on_item``: what a worker emits with the returned function reaches it later,
        on the Tk thread, until the item emitted as final."""
        token = next(self._tokens)
        self._callbacks[token] = on_item
        self.pending += 1
        self.busy_var.set(f"Waiting for {self.pending} answer(s)…")
        # The worker must hold nothing of Tk: a Tk object released on another thread breaks Tcl.
        return functools.partial(_put, self.results, token, title)

    def run_in_background(self, title: str, call: Callable[[], Result], on_done: Done) -> None:
        """Run ``call`` in a worker thread; ``on_done(title, result)`` runs later on the Tk thread."""
        emit = self.listen(title, on_done)
        threading.Thread(target=_work, args=(emit, title, call), name=f"tester: {title}",
                         daemon=True).start()

    def drain_results(self) -> None:
        """Hand what workers emitted to its callbacks; runs every DRAIN_MS on the Tk thread."""
        while True:
            try:
                token, title, item, final = self.results.get_nowait()
            except queue.Empty:
                break
            if final:
                self.pending -= 1
            callback = self._callbacks.pop(token) if final else self._callbacks[token]
            try:
                callback(title, item)
            except Exception:
                logger.exception("showing the result of %s failed", title)
        self.busy_var.set(f"Waiting for {self.pending} answer(s)…" if self.pending else "Ready")
        self._drain_after = self.root.after(self.DRAIN_MS, self.drain_results)

    def show_result(self, title: str, result: Result) -> None:
        """Append one formatted Result to the text window."""
        self.append(fmt.format_lines(title, result))

    def show_asset(self, title: str, result: Result) -> None:
        """Show an upload's answer; copy the asset's workflow reference to the clipboard."""
        lines = fmt.format_lines(title, result)
        if result.ok and fmt.is_asset(result.data):
            reference = fmt.asset_reference(result.data)
            self.root.clipboard_clear()
            self.root.clipboard_append(reference)
            lines.append((f"workflow input (copied to the clipboard): {reference}", fmt.INFO))
        self.append(lines)

    def append(self, lines: fmt.Lines, source: object = None) -> None:
        """Add lines at the bottom of the text window and scroll to them.

        A blank line starts each entry, except for more lines from the ``source`` that wrote last.
        """
        self.text.configure(state="normal")
        if (source is None or source is not self._tail) and self.text.index("end-1c") != "1.0":
            self.text.insert("end", "\n")
        self._tail = source
        for text, tag in lines:
            self.text.insert("end", text + "\n", tag)
        self.text.configure(state="disabled")
        self.text.see("end")

    def output(self) -> str:
        """Everything in the text window, as plain text."""
        return self.text.get("1.0", "end-1c")

    def close(self) -> None:
        """Remember the fields, stop the timers and close the window."""
        self.stop_watch(None)
        self.remember()
        self.root.after_cancel(self._drain_after)
        self.root.destroy()


def labelled_entry(parent: ttk.Frame, column: int, text: str, variable: tk.StringVar, width: int,
                   **grid) -> ttk.Entry:
    """Lay out a label at ``column`` of row 0 and its entry right of it; return the entry."""
    ttk.Label(parent, text=text).grid(row=0, column=column, sticky="w")
    entry = ttk.Entry(parent, textvariable=variable, width=width)
    entry.grid(row=0, column=column + 1, **{"padx": (4, 12), **grid})
    return entry


def _put(results: queue.Queue, token: int, title: str, item: object, final: bool) -> None:
    """Queue one item of a worker for the Tk thread."""
    results.put((token, title, item, final))


def _work(emit: Emit, title: str, call: Callable[[], Result]) -> None:
    """Body of a worker thread: run one request and emit its Result as the final item."""
    try:
        result = call()
    except Exception as exc:  # the client never raises; this is a last guard
        logger.exception("request failed: %s", title)
        result = Result("", "", None, 0.0, error_text=f"internal error: {exc!r}")
    emit(result, True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: optional overrides of the remembered fields."""
    parser = argparse.ArgumentParser(
        prog="cylindria-tester", description="Desktop tester for a Cylindria server.",
        epilog=f"The API key field starts with ${API_KEY_ENV} when set; it is never saved. "
               f"Settings live in {settings_mod.settings_path()} "
               f"(directory overridable with ${settings_mod.CONFIG_DIR_ENV}).")
    parser.add_argument("--url", help="Cylindria's URL, e.g. http://127.0.0.1")
    parser.add_argument("--port", help="Cylindria's port")
    parser.add_argument("--gpu-id", help="GpuId to send: an index, or auto for Cylindria's queue")
    parser.add_argument("--priority", help="priority of started jobs, -100..100 (empty: not sent)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tester`` and the ``cylindria-tester`` script."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_mod.load()
    for field, value in (("url", args.url), ("port", args.port), ("gpu_id", args.gpu_id),
                         ("priority", args.priority)):
        if value is not None:
            setattr(settings, field, value)
    root = tk.Tk()
    App(root, settings=settings, api_key=os.environ.get(API_KEY_ENV, ""))
    root.mainloop()
    return 0
