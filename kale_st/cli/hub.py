"""``push``: upload a saved pair to the Hugging Face Hub (AsymmetricPair.push_to_hub).

Example:
    kale-st push --pair kale-out --query-repo org/kale-query-2l --document-repo org/kale-doc
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import get_token

from kale_st.cli.arguments import DEFAULT_OUTPUT, AddCommand
from kale_st.cli.loading import load_pair


def push(args: argparse.Namespace) -> None:
    """``AsymmetricPair.push_to_hub``: upload a saved pair as Hub model repos with linked model cards."""
    token = args.token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`")
    pair = load_pair(args.pair)
    commits = pair.push_to_hub(
        args.query_repo,
        document_repo_id=args.document_repo,
        router_repo_id=args.router_repo,
        private=True if args.private else None,
        token=token,
        create_pr=args.create_pr,
        revision=args.revision,
        onnx=(Path(args.pair) / "query" / "onnx").is_dir(),
    )
    for kind, commit in commits.items():
        print(f"{kind}: {commit.pr_url or commit.commit_url}")


def register(add_command: AddCommand) -> None:
    sub = add_command(
        "push",
        push,
        "Upload a saved pair to the Hugging Face Hub as model repos with linked model cards.",
        "HF_TOKEN=hf_... kale-st push --pair kale-out --query-repo me/minilm-kale-2l --document-repo me/minilm-docs",
        "kale-st push --pair kale-out --query-repo me/minilm-kale-2l --router-repo me/minilm-kale-router",
        details="Without --document-repo the cards point at the source model on the Hub, which must be a Hub id "
        "(AsymmetricPair.push_to_hub). A pair saved with --onnx uploads its ONNX files too. The token is never "
        "printed.",
    )
    sub.add_argument("--pair", default=DEFAULT_OUTPUT, help="saved pair folder; default %(default)s")
    sub.add_argument("--query-repo", required=True, help="repo of the query encoder, namespace/name")
    sub.add_argument("--document-repo", help="repo to upload the document encoder to (needed when the source model "
                     "is a local folder)")
    sub.add_argument("--router-repo", help="also upload the router model (one model for both sides) there")
    sub.add_argument("--private", action="store_true", help="create the repos private")
    sub.add_argument("--create-pr", action="store_true", help="open pull requests instead of committing to main")
    sub.add_argument("--revision", help="branch to commit to")
    sub.add_argument("--token", help="Hugging Face token; default: HF_TOKEN or the `hf auth login` token")
