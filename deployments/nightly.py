"""Set up the nightly deployment's data source and its failure notifications (issue 15).

    python deployments/nightly.py data-source --path s3://bucket/prices.parquet
    python deployments/nightly.py automation --webhook https://hooks.example.com/T0/B0

`data-source` loads and validates the prices file (a local path on the worker or an fsspec
URL), then saves it as the `nightly-prices` Tournament Data Source block the nightly
deployment names (prefect.yaml). `days` stays empty: the nightly config anchors its windows
([windows] start), so the whole file is used.

`automation` saves a Custom Webhook notification block (`nightly-failures`, a JSON POST of
{"subject", "body"} to the URL) and creates the automation of
deployments/automations/nightly-failures.yaml for the `tournament/nightly` deployment
(deploy first), replacing one of the same name. Both talk to the Prefect API of
PREFECT_API_URL. Errors are one `error:` line, exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AUTOMATION_SPEC = REPO / "deployments" / "automations" / "nightly-failures.yaml"
DATA_BLOCK = "nightly-prices"
WEBHOOK_BLOCK = "nightly-failures"
DEPLOYMENT = "tournament/nightly"


def save_data_source(path: str, *, data_kind: str = "prices", name: str = DATA_BLOCK) -> str:
    """Validate the file, save the data source block; returns a one-line description."""
    from blocks.tournament_blocks import DataSourceBlock
    from tournament.data import load_file
    dataset = load_file(path, kind=data_kind)        # DataError (one line) on a bad file
    DataSourceBlock(kind="path", path=path, data_kind=data_kind).save(name, overwrite=True)
    return (f"saved tournament-data-source/{name}: {path} ({dataset.n_days} days x "
            f"{dataset.n_assets} assets, {dataset.dates[0].date()} .. {dataset.dates[-1].date()})")


def automation_spec(deployment_id, block_document_id, spec_path: Path = AUTOMATION_SPEC):
    """The automation of `spec_path` for this deployment and notification block."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore
    spec = yaml.safe_load(spec_path.read_text())
    spec["trigger"]["match_related"]["prefect.resource.id"] = f"prefect.deployment.{deployment_id}"
    for action in spec["actions"]:
        if action["type"] == "send-notification":
            action["block_document_id"] = str(block_document_id)
    return AutomationCore.model_validate(spec)


def create_automation(webhook: str, *, deployment: str = DEPLOYMENT,
                      block_name: str = WEBHOOK_BLOCK) -> str:
    """Save the webhook block and (re)create the automation; returns a one-line description."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from tournament.errors import ConfigError
    block = CustomWebhookNotificationBlock(
        name=block_name, url=webhook,
        json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block_id = block.save(block_name, overwrite=True)
    with get_client(sync_client=True) as client:
        try:
            target = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(f"no deployment {deployment!r} on this Prefect API: run "
                              "`prefect --no-prompt deploy --all` first") from None
        automation = automation_spec(target.id, block_id)
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)          # one automation per name, the newest
        automation_id = client.create_automation(automation)
    return (f"automation {automation.name} ({automation_id}): {deployment} runs ending "
            f"{', '.join(sorted(e.rsplit('.', 1)[1] for e in automation.trigger.expect))} "
            f"-> POST {webhook}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data-source", help="save the nightly-prices data source block")
    data.add_argument("--path", required=True, help="prices file: a worker path or fsspec URL")
    data.add_argument("--data-kind", default="prices", choices=["prices", "returns"])
    auto = sub.add_parser("automation", help="create the nightly failure notification")
    auto.add_argument("--webhook", required=True, help="URL the notification is POSTed to")
    args = parser.parse_args(argv)
    from tournament.errors import TournamentError
    try:
        if args.command == "data-source":
            print(save_data_source(args.path, data_kind=args.data_kind))
        else:
            print(create_automation(args.webhook))
    except TournamentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
