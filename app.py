"""Tunesmith: `python app.py` opens the fine-tuning app at http://127.0.0.1:7860.

Layout and wiring only: every action goes through engine.api, and training runs in its own process.
  --host 0.0.0.0 / --share   reachable from other machines: needs --auth user:password (one is generated otherwise)
  --auth user:password       a login; with one, the app is shared: paths and run ids stay inside the workspace's
                             runs/, data/ and exports/, and uploads go to its .uploads/ unless GRADIO_TEMP_DIR names
                             a folder (TUNESMITH_AUTH=user:password keeps the login out of the process list other
                             users can read)
  --root-path /prefix        when served behind a reverse proxy: reachable from elsewhere too, so it needs a login
  --lend-hf-token            a shared app's hub downloads use this machine's Hugging Face token (or set
                             TUNESMITH_LEND_HF_TOKEN=1); without it they send none, so gated and private models fail
  --workspace DIR            keep runs/, data/ and exports/ in DIR instead of the working folder (or set
                             TUNESMITH_WORKSPACE=DIR); relative paths typed in the app are read from there too
"""

import argparse
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from engine import api

LOOPBACK = ("127.0.0.1", "localhost", "::1")
REFUSED_HOST = (
    "This app has no login, so it answers only at http://127.0.0.1 (or localhost) on its own machine. To open it "
    "under another address (a proxy, a notebook, another machine), start it with --share, or with --auth "
    "user:password."
)


class LoopbackHostOnly:
    """ASGI middleware for the app without a login: it answers only requests addressed to a loopback name. A web page
    elsewhere can point its own host name at 127.0.0.1 (DNS rebinding) and so call the app from the user's browser,
    which a request's Origin does not show, since to the browser the page and the app are one site."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            try:
                host = urlsplit("//" + Headers(scope=scope).get("host", "")).hostname
            except ValueError:  # not a host name at all ("[::1")
                host = None
            if host not in LOOPBACK:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await PlainTextResponse(REFUSED_HOST, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app():
    """The app's gr.Blocks. Gradio is imported here, not above: it reads GRADIO_TEMP_DIR as it is imported
    (gradio.route_utils), and `python app.py` names a shared app's upload folder first (keep_uploads)."""
    import gradio as gr

    from ui import chat_tab, data_tab, eval_tab, export_tab, i18n, model_tab, train_settings, train_tab

    with gr.Blocks(title="Tunesmith") as demo:
        with gr.Row():
            gr.Markdown("# Tunesmith\nPick a model, drop in a dataset, press Train, chat with the result, export it.")
            language = gr.Radio(list(i18n.LANGUAGES), value="English", label="Language", scale=0)
        model = model_tab.build()
        data = data_tab.build(model["custom_or_catalog"])
        train = train_tab.build(
            [model["custom_or_catalog"], model["method"], model["trust"]],
            [data["path"], data["mapping"], data["template"], data["config"], data["split"], data["max_len"]],
        )
        data_tab.wire_objective(data, train["objective"])
        model_tab.wire_train(model, train)
        chat = chat_tab.build()
        train_tab.wire_chat(train, chat["source"])
        train_settings.wire_load(train, model, data)
        data_tab.wire_train(data, train["advanced"])
        export_tab.build()
        eval_tab.build()
        items = i18n.translatable(demo.blocks)
        language.change(i18n.switcher(items), [language, *i18n.shown(items)], [block for block, _ in items])
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Tunesmith: one-click local fine-tuning.")
    ap.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    ap.add_argument("--share", action="store_true", help="public link through Gradio's tunnel (needs a password)")
    ap.add_argument(
        "--auth",
        default=os.environ.get("TUNESMITH_AUTH"),
        help="user:password required to log in (or set TUNESMITH_AUTH: a command line is visible to other users)",
    )
    ap.add_argument(
        "--root-path",
        default=os.environ.get("GRADIO_ROOT_PATH", ""),
        help="URL prefix behind a reverse proxy (which makes the app reachable from elsewhere: needs a login)",
    )
    ap.add_argument(
        "--lend-hf-token",
        action="store_true",
        default=api.hub_token_lend_asked(),
        help="with a login, let the app's hub downloads use this machine's Hugging Face token (HF_TOKEN or your "
        "`hf auth login`), so its users can fetch the gated and private models it reaches (or set "
        "TUNESMITH_LEND_HF_TOKEN=1); without it a shared app sends no token",
    )
    ap.add_argument(
        "--workspace",
        default=os.environ.get(api.WORKSPACE_ENV),
        help="the folder the app keeps runs/, data/ and exports/ in (default: the working folder; or set "
        "TUNESMITH_WORKSPACE)",
    )
    return ap.parse_args(argv)


_workspace_used = False  # set when `python app.py` applied --workspace before building the tabs


def use_workspace(folder: str | None) -> None:
    """Make `folder` (made if missing) the workspace, for this process and the runs and exports it starts, and the
    working folder, so a relative path typed in the app (data/mine.jsonl) means one of the workspace's files."""
    if not folder:
        return
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        sys.exit(f"--workspace {folder}: cannot use it as a folder ({e.strerror}); name a folder you can write to.")
    os.environ[api.WORKSPACE_ENV] = str(path)
    os.chdir(path)


def reachable(args) -> bool:
    """Whether the app is reachable from elsewhere: another address than loopback, a share link, or a reverse proxy in
    front of it (--root-path, whose proxy forwards every request from 127.0.0.1)."""
    return bool(args.share or args.host not in LOOPBACK or args.root_path)


def keep_uploads(args) -> None:
    """A shared app (one with a login: auth_for) keeps its users' uploads in its workspace (api.uploads_dir), unless
    GRADIO_TEMP_DIR names a folder. Gradio's own, /tmp/gradio, is every Gradio app's of this machine, and Gradio
    serves the whole of it, as the app opens it: its users reached every other app's uploads and outputs there.
    Called before gradio is imported: it reads the variable then (the upload folder is read again later, when the
    tabs are built and when the app starts serving, so it is named before all three)."""
    if (args.auth or reachable(args)) and not os.environ.get("GRADIO_TEMP_DIR"):  # Gradio takes "" for unset too
        os.environ["GRADIO_TEMP_DIR"] = str(api.uploads_dir())


def auth_for(args) -> tuple[str, str] | None:
    """The login to require: the one given, or a generated one whenever the app is reachable from elsewhere."""
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            sys.exit("--auth must look like user:password")
        return user, password
    if reachable(args):
        password = secrets.token_urlsafe(12)
        print(
            f"This app is reachable from other machines, so it needs a login: user 'tunesmith', password "
            f"'{password}' (set your own with --auth user:password).",
            flush=True,
        )
        return "tunesmith", password
    return None


def share(args) -> None:
    """What a shared app (one with a login: reachable from elsewhere, or shared through it) lends its users, set before
    it serves anyone: files of the workspace's runs/, data/ and exports/ only, and the machine's hub token only when
    the host lends it."""
    # Every file in the workspace's runs/, data/ and exports/ can be opened by whoever logs in (the Data tab shows a
    # .json or .txt file's rows): a workspace that is the home folder would lend the user's own ~/data and ~/exports,
    # and a runs folder there (TUNESMITH_RUNS) all of it.
    home = Path.home().resolve()
    for folder in (api.workspace(), api.runs_dir()):
        if folder == home or folder in home.parents:
            sys.exit(
                f"This app is shared, and its workspace {folder} holds your whole home folder, every file of "
                "which its users could open: start it with --workspace /path/to/a/folder of its own (or from the "
                "project folder)."
            )
    # every path that arrives from the browser or the HTTP API must name a file in the workspace's runs/, data/ or
    # exports/ or Gradio's uploads, not hidden, and a run id a folder in runs/
    from gradio.utils import get_upload_folder  # the folder Gradio uploads to (keep_uploads): exactly that one

    uploads = get_upload_folder()
    api.restrict_files([uploads])
    if args.lend_hf_token:
        print("This shared app lends this machine's Hugging Face token to its users' hub downloads.", flush=True)
    elif api.withhold_hub_token():
        print(
            "This shared app downloads from the Hugging Face hub without this machine's token, so its users reach "
            "no gated or private model through it; start it with --lend-hf-token to lend the token.",
            flush=True,
        )
    # Gradio serves every file under GRADIO_ALLOWED_PATHS to anyone logged in, whatever the workspace rule above: an
    # environment variable set for another app (or by a hosting platform) must not widen what this one hands out.
    # The app needs none: what it returns is copied into Gradio's cache, and uploads are served from there.
    if os.environ.pop("GRADIO_ALLOWED_PATHS", None):
        print("GRADIO_ALLOWED_PATHS is ignored: a shared app serves no folder beyond its own files.", flush=True)
    # Gradio also serves every file of its examples cache, GRADIO_EXAMPLES_CACHE (set empty: the working folder, the
    # project folder often). The app caches no examples: a folder in the uploads, served already, is named instead.
    if os.environ.get("GRADIO_EXAMPLES_CACHE") is not None:
        print("GRADIO_EXAMPLES_CACHE is ignored: a shared app serves no folder beyond its own files.", flush=True)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(Path(uploads) / "cached_examples")


def main(argv=None) -> None:
    args = parse_args(argv)
    if not _workspace_used:
        use_workspace(args.workspace)
    auth = auth_for(args)
    if auth is not None:
        share(args)
    for folder in api.tidy_workspace():
        print(f"removed {folder}, left half-written by a process that is gone", flush=True)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        root_path=args.root_path,
        max_file_size="1gb",
        # Gradio's run history (on by default) keeps every call's inputs, the Export tab's hub token among them, in
        # the browser or a hub bucket; and its routes ask for no login and use this machine's hub token for any
        # request that looks local, as a reverse proxy's (--root-path) all do. The app's runs are in runs/.
        run_history=False,
        mcp_server=False,  # GRADIO_MCP_SERVER would serve every handler as an MCP tool, which asks for no login
        app_kwargs=None if auth else dict(middleware=[Middleware(LoopbackHostOnly)]),
    )


if __name__ == "__main__":
    _args = parse_args()
    use_workspace(_args.workspace)  # before the tabs are built: they list the workspace's runs and exports
    _workspace_used = True  # main() must not apply it again: a relative DIR would then name DIR/DIR
    keep_uploads(_args)  # before gradio is imported (build_app)
demo = build_app()

if __name__ == "__main__":
    main()
