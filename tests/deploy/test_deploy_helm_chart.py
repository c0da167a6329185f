"""helm lint/template of helm/labelfleet plus assertions on the rendered manifests (offline)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    CHART,
    CI_VALUES,
    CRD_KINDS,
    HELM_HOOK,
    KUBE_VERSION,
    SCENARIOS,
    containers,
    pod_spec,
)

GPU_SCENARIOS = ["default", "keda", "external-secret"]
SECRET_ENV = {
    "LABELFLEET_DB_URL",
    "LABELFLEET_BROKER_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "CELERY_BROKER_URL",
}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    pod = pod_spec(doc)
    assert pod is not None
    return next(c for c in containers(pod) if c["name"] == name)


# --- helm lint / schema -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_helm_lint_strict(run_helm, scenario: str) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for f in SCENARIOS[scenario]:
        args += ["-f", str(CI_VALUES / f)]
    proc = run_helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_broken_values_fail_the_schema(run_helm, render_chart) -> None:
    proc = run_helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES / "broken-values.yaml"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Additional property replica is not allowed" in out  # typo caught by additionalProperties
    assert "workers.gpu.enabled: Invalid type. Expected: boolean" in out
    assert "Additional property LABELFLEET_DB_URL is not allowed" in out  # secrets are not config
    assert "LABELFLEET_LOG_LEVEL must be one of" in out
    # helm template/install refuse it too, before rendering anything.
    rendered = render_chart(["broken-values.yaml"])
    assert (
        rendered.returncode != 0 and "values don't meet the specifications of the schema" in rendered.stderr
    )


def _walk_schema(schema: dict[str, Any], values: Any, path: str) -> list[str]:
    problems = []
    if "$ref" in schema:
        return problems
    for key in ("description", "default"):
        if key not in schema:
            problems.append(f"{path}: no {key}")
    if "type" not in schema:
        problems.append(f"{path}: no type")
    if schema.get("default") != values:
        problems.append(f"{path}: default {schema.get('default')!r} != values.yaml {values!r}")
    if schema.get("type") == "object" and "properties" in schema:
        if schema.get("additionalProperties") is not False:
            problems.append(f"{path}: additionalProperties is not false")
        if set(schema["properties"]) != set(values):
            problems.append(
                f"{path}: schema keys {sorted(schema['properties'])} != values keys {sorted(values)}"
            )
        for key, sub in schema["properties"].items():
            problems += _walk_schema(sub, values.get(key), f"{path}.{key}")
    return problems


def test_schema_describes_every_value() -> None:
    """Style: draft-07, every key with description/type/default (== values.yaml), closed objects."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values)
    problems = []
    for key, sub in schema["properties"].items():
        problems += _walk_schema(sub, values[key], key)
    assert not problems, "\n".join(problems)
    refs = set(re.findall(r'"#/definitions/([^"]+)"', json.dumps(schema)))
    assert refs <= set(schema["definitions"]), refs - set(schema["definitions"])


# --- kubernetes-validate ------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_manifests_validate_against_kubernetes(
    render_chart, kubernetes_validate_cmd, tmp_path, scenario
) -> None:
    rendered = render_chart(SCENARIOS[scenario])
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / f"{scenario}.yaml"
    manifest.write_text(rendered.text)
    proc = subprocess.run(
        [*kubernetes_validate_cmd, "--strict", "--quiet", "-k", KUBE_VERSION, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ERROR" not in out and "FATAL" not in out, out
    # Only the CRDs (KEDA, Prometheus Operator) have no schema there; everything else was validated.
    warned = set(re.findall(r"Couldn't find schema for kind (\w+)", out))
    assert warned <= CRD_KINDS, out
    assert warned == {d["kind"] for d in rendered.docs} & CRD_KINDS


def test_kubernetes_validate_is_strict(kubernetes_validate_cmd, tmp_path) -> None:
    """Guard against a silently permissive validator: an unknown field must fail."""
    bad = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "automountToken": False}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [*kubernetes_validate_cmd, "--strict", "-k", KUBE_VERSION, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "ERROR" in proc.stdout, proc.stdout + proc.stderr


# --- workers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", GPU_SCENARIOS)
def test_workers_get_one_gpu_each(render_chart, scenario: str) -> None:
    worker = render_chart(SCENARIOS[scenario]).one("Deployment", "-worker")
    pod = pod_spec(worker)
    main = _container(worker, "worker")
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert main["args"][:2] == ["worker", "--queues"]
    assert main["args"][main["args"].index("--device") + 1] == "cuda:0"
    assert main["args"][main["args"].index("--concurrency") + 1] == "1"
    assert _env(main)["LABELFLEET_DEVICE"]["value"] == "cuda:0"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # No surge pod waiting for a GPU that is not there during a rollout.
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_cpu_workers_request_no_gpu(render_chart) -> None:
    main = _container(render_chart(SCENARIOS["bundled"]).one("Deployment", "-worker"), "worker")
    assert "nvidia.com/gpu" not in main["resources"].get("limits", {})
    assert _env(main)["LABELFLEET_DEVICE"]["value"] == "cpu"


def test_gpu_node_selection_from_values(render_chart) -> None:
    pod = pod_spec(render_chart(SCENARIOS["keda"]).one("Deployment", "-worker"))
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_grace_period_exceeds_task_hard_limit(render_chart, scenario: str) -> None:
    worker = render_chart(SCENARIOS[scenario]).one("Deployment", "-worker")
    hard = int(_env(_container(worker, "worker"))["LABELFLEET_TASK_HARD_TIME_LIMIT"]["value"])
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > hard
    pre_stop = _container(worker, "worker")["lifecycle"]["preStop"]["exec"]["command"]
    assert "cancel_consumer" in " ".join(pre_stop)


def test_grace_period_not_above_hard_limit_is_refused(render_chart) -> None:
    rendered = render_chart(values={"workers": {"terminationGracePeriodSeconds": 1800}})
    assert rendered.returncode != 0
    assert "must be greater than LABELFLEET_TASK_HARD_TIME_LIMIT" in rendered.stderr


def test_model_cache_volume_and_fetch(render_chart) -> None:
    worker = render_chart(SCENARIOS["external-secret"]).one("Deployment", "-worker")
    pod = pod_spec(worker)
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == "labelfleet-models"
    fetch = _container(worker, "fetch-models")
    assert fetch["args"] == ["models", "fetch", "fast"]
    assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]
    off = render_chart(values={"workers": {"fetchModels": {"enabled": False}}}).one("Deployment", "-worker")
    assert "fetch-models" not in [c["name"] for c in containers(pod_spec(off))]


# --- migrations -----------------------------------------------------------------------------------


def test_migration_job_is_a_pre_install_hook(render_chart) -> None:
    job = render_chart().one("Job", "-migrate")
    assert job["metadata"]["annotations"] == {
        "helm.sh/hook": "pre-install,pre-upgrade",
        "helm.sh/hook-weight": "1",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
    }
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert _container(job, "migrate")["args"] == ["db", "upgrade"]
    assert spec["ttlSecondsAfterFinished"] == 300
    # The chart's ServiceAccount does not exist yet when a pre-install hook runs.
    assert "serviceAccountName" not in spec["template"]["spec"]


def test_migration_job_runs_post_install_with_bundled_postgres(render_chart) -> None:
    job = render_chart(SCENARIOS["bundled"]).one("Job", "-migrate")
    assert job["metadata"]["annotations"][HELM_HOOK] == "post-install,post-upgrade"


def test_migration_job_without_hooks_for_gitops(render_chart) -> None:
    job = render_chart(values={"migrateJob": {"useHelmHooks": False, "jobAnnotations": {"a": "b"}}}).one(
        "Job"
    )
    assert job["metadata"]["annotations"] == {"a": "b"}


def test_migration_job_annotations_merge_and_ttl(render_chart) -> None:
    job = render_chart(SCENARIOS["external-secret"]).one("Job", "-migrate")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
    assert job["metadata"]["annotations"][HELM_HOOK] == "pre-install,pre-upgrade"
    assert "ttlSecondsAfterFinished" not in job["spec"]  # null keeps finished Jobs
    zero = render_chart(values={"migrateJob": {"ttlSecondsAfterFinished": 0}}).one("Job", "-migrate")
    assert zero["spec"]["ttlSecondsAfterFinished"] == 0  # 0 is not "unset"
    assert render_chart(values={"migrateJob": {"enabled": False}}).kinds("Job") == []


@pytest.mark.parametrize("component", ["-worker", "-sweeper"])
def test_pods_wait_for_migrations(render_chart, component: str) -> None:
    deployment = render_chart().one("Deployment", component)
    init = _container(deployment, "wait-for-migrations")
    assert init["command"] == ["labelfleet-wait-for-migrations"]
    assert init["image"].startswith("ghcr.io/labelfleet/labelfleet:")  # slim image, no torch
    off = render_chart(values={"waitForMigrations": {"enabled": False}}).one("Deployment", component)
    assert "wait-for-migrations" not in [c["name"] for c in containers(pod_spec(off))]


# --- secrets --------------------------------------------------------------------------------------

PLAINTEXT = {
    "db": "postgresql+psycopg://lf:db-pw-7f3a@db.internal:5432/labelfleet",
    "broker": "redis://:broker-pw-91c2@redis.internal:6379/0",
    "key": "AKIAPLAINTEXTKEY",
    "secret": "s3-secret-4b1d",
}


def _secret_scenarios(render_chart):
    created = render_chart(
        values={
            "secrets": {
                "create": True,
                "dbUrl": PLAINTEXT["db"],
                "brokerUrl": PLAINTEXT["broker"],
                "s3Credentials": True,
                "accessKeyId": PLAINTEXT["key"],
                "secretAccessKey": PLAINTEXT["secret"],
            }
        }
    )
    return [render_chart(files) for files in SCENARIOS.values()] + [created]


def test_no_plaintext_secret_in_rendered_manifests(render_chart) -> None:
    for rendered in _secret_scenarios(render_chart):
        assert rendered.returncode == 0, rendered.stderr
        for needle in [*PLAINTEXT.values(), "pw-", "minio-secret-from-values"]:
            assert needle not in rendered.text
        for secret in rendered.kinds("Secret"):
            assert "stringData" not in secret
        for doc in rendered.docs:
            pod = pod_spec(doc)
            for c in containers(pod) if pod else []:
                for name, entry in _env(c).items():
                    if name in SECRET_ENV or "PASSWORD" in name:
                        # Secret by reference, or a URL built only from $(VAR) references.
                        ref = entry.get("valueFrom", {}).get("secretKeyRef")
                        value = entry.get("value", "")
                        assert ref or re.fullmatch(
                            r"[^:@]+://[^:@/]*:\$\([A-Z_]+\)@.+|\$\([A-Z_]+\)", value
                        ), f"{doc['kind']}/{doc['metadata']['name']} {c['name']}: {name}={value!r}"


def test_chart_created_secret_is_base64_and_a_hook(render_chart) -> None:
    rendered = _secret_scenarios(render_chart)[-1]
    secret = rendered.one("Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "LABELFLEET_DB_URL": PLAINTEXT["db"],
        "LABELFLEET_BROKER_URL": PLAINTEXT["broker"],
        "AWS_ACCESS_KEY_ID": PLAINTEXT["key"],
        "AWS_SECRET_ACCESS_KEY": PLAINTEXT["secret"],
    }
    # The pre-install migration Job needs it, so it is created as an earlier hook.
    assert secret["metadata"]["annotations"][HELM_HOOK] == "pre-install,pre-upgrade"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < 1


def test_existing_secret_is_referenced_not_rendered(render_chart) -> None:
    rendered = render_chart(SCENARIOS["external-secret"])
    assert rendered.kinds("Secret") == []
    env = _env(_container(rendered.one("Deployment", "-worker"), "worker"))
    refs = {
        n: env[n]["valueFrom"]["secretKeyRef"]
        for n in ("LABELFLEET_DB_URL", "LABELFLEET_BROKER_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    assert {r["name"] for r in refs.values()} == {"labelfleet-prod"}
    assert refs["LABELFLEET_DB_URL"]["key"] == "db-url"
    assert refs["LABELFLEET_BROKER_URL"]["key"] == "broker-url"


def test_default_install_expects_a_secret_named_after_the_release(render_chart) -> None:
    rendered = render_chart()
    assert rendered.kinds("Secret") == []
    env = _env(_container(rendered.one("Deployment", "-sweeper"), "sweeper"))
    assert env["LABELFLEET_DB_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "lf-labelfleet",
        "key": "LABELFLEET_DB_URL",
    }
    assert "AWS_ACCESS_KEY_ID" not in env  # IRSA / workload identity by default


def test_service_account_annotations_for_irsa(render_chart) -> None:
    sa = render_chart(SCENARIOS["external-secret"]).one("ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/labelfleet"
    }
    gke = render_chart(
        values={
            "serviceAccount": {
                "annotations": {"iam.gke.io/gcp-service-account": "lf@p.iam.gserviceaccount.com"}
            }
        }
    ).one("ServiceAccount")
    assert "iam.gke.io/gcp-service-account" in gke["metadata"]["annotations"]
    worker = render_chart(SCENARIOS["external-secret"]).one("Deployment", "-worker")
    assert pod_spec(worker)["serviceAccountName"] == sa["metadata"]["name"]


# --- pod security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_restricted_pod_security(render_chart, scenario: str) -> None:
    rendered = render_chart(SCENARIOS[scenario])
    pods = [(d, pod_spec(d)) for d in rendered.docs if pod_spec(d) is not None]
    assert pods
    for doc, pod in pods:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc["runAsUser"] != 0, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod.get("automountServiceAccountToken") is False, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), where
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert not sc["capabilities"].get("add"), (where, c["name"])
            assert not sc.get("privileged"), (where, c["name"])
            assert c.get("resources", {}).get("limits", {}).get("memory"), (where, c["name"])


# --- KEDA, monitoring, bundled services ------------------------------------------------------------


def test_keda_scales_workers_on_database_backlog(render_chart) -> None:
    rendered = render_chart(SCENARIOS["keda"])
    worker = rendered.one("Deployment", "-worker")
    assert "replicas" not in worker["spec"]  # KEDA/HPA owns it
    scaled = rendered.one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 16)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"  # the database's pending+running count, not the Redis list
    assert trigger["metadata"] == {
        "query": "SELECT COUNT(*) FROM items i JOIN jobs j ON j.id = i.job_id WHERE j.queue IN ('lf.default') "
        "AND j.state NOT IN ('done', 'cancelled') AND i.status IN ('pending', 'running')",
        "targetQueryValue": "96",
        "activationTargetQueryValue": "0",
    }
    auth = rendered.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "labelfleet-keda-db", "key": "connection"}
    ]


def test_keda_query_runs_on_the_real_schema(render_chart, pg_url: str) -> None:
    """The rendered scaler query, run on a migrated PostgreSQL: counts pending+running of live jobs only."""
    from sqlalchemy import text

    from labelfleet.db import migrate
    from labelfleet.db import repository as repo
    from labelfleet.db.engine import make_engine, session_factory
    from labelfleet.db.models import Item, Job
    from labelfleet.types import ImageRef

    query = render_chart(SCENARIOS["keda"]).one("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    with session_factory(engine)() as s:
        for name, queue, state in (("a", "lf.default", "running"), ("b", "lf.default", "cancelled"),
                                   ("c", "lf.fast", "running")):
            job, _ = repo.get_or_create_job(s, name, "/src", {}, {}, queue=queue)
            job.state = state
            s.commit()
            repo.add_items(s, job, (ImageRef("/src", f"{i}.jpg") for i in range(5)))
        a = s.query(Job).filter_by(name="a").one()
        ids = [i.id for i in s.query(Item).filter_by(job_id=a.id).order_by(Item.id)]
        s.query(Item).filter(Item.id == ids[0]).update({"status": "done"})
        s.query(Item).filter(Item.id == ids[1]).update({"status": "running"})
        s.commit()
        assert s.execute(text(query)).scalar_one() == 4
    engine.dispose()


def test_keda_off_by_default_and_needs_a_database(render_chart) -> None:
    rendered = render_chart()
    assert rendered.kinds("ScaledObject") == []
    assert rendered.one("Deployment", "-worker")["spec"]["replicas"] == 1
    missing = render_chart(values={"keda": {"enabled": True}})
    assert missing.returncode != 0 and "keda.postgresql.connectionSecret" in missing.stderr
    no_key = render_chart(values={"keda": {"enabled": True, "postgresql": {"connectionSecret": {"name": "x"}}}})
    assert no_key.returncode != 0 and "keda.postgresql.connectionSecret.key is required" in no_key.stderr


def test_keda_with_bundled_postgresql(render_chart) -> None:
    rendered = render_chart(SCENARIOS["bundled"])
    meta = rendered.one("ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (meta["host"], meta["port"], meta["userName"], meta["dbName"], meta["sslmode"]) == (
        "lf-labelfleet-postgresql", "5432", "labelfleet", "labelfleet", "disable")
    assert rendered.one("TriggerAuthentication")["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "lf-labelfleet-bundled", "key": "postgres-password"}
    ]


def test_worker_probes_use_labelfleet_health(render_chart) -> None:
    worker = _container(render_chart().one("Deployment", "-worker"), "worker")
    assert worker["livenessProbe"]["exec"]["command"] == ["labelfleet", "health", "--alive-only", "--max-age",
                                                          "120"]
    assert worker["readinessProbe"]["exec"]["command"] == ["labelfleet", "health", "--max-age", "120"]
    startup = worker["startupProbe"]
    assert startup["exec"]["command"] == worker["livenessProbe"]["exec"]["command"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900  # model loading is not a crash
    off = _container(render_chart(values={"workers": {"probes": {"enabled": False}}}).one("Deployment", "-worker"),
                     "worker")
    assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(off)


def test_worker_pdb_selects_the_workers(render_chart) -> None:
    rendered = render_chart()
    pdb = rendered.one("PodDisruptionBudget", "-worker")
    worker = rendered.one("Deployment", "-worker")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    assert render_chart(values={"workers": {"pdb": {"enabled": False}}}).kinds("PodDisruptionBudget") == []


def test_flower_network_policy(render_chart) -> None:
    rendered = render_chart(SCENARIOS["keda"])
    policy = rendered.one("NetworkPolicy", "-flower")
    flower = rendered.one("Deployment", "-flower")
    assert policy["spec"]["podSelector"]["matchLabels"] == flower["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"lf-labelfleet-flower-client": "true"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    assert render_chart().kinds("NetworkPolicy") == []  # no Flower, no policy


def test_service_monitor_scrapes_flower(render_chart) -> None:
    rendered = render_chart(SCENARIOS["keda"])
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service", "-flower")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert service["spec"]["type"] == "ClusterIP"
    refused = render_chart(values={"serviceMonitor": {"enabled": True}})
    assert refused.returncode != 0 and "flower.enabled" in refused.stderr


def test_bundled_databases_are_opt_in(render_chart) -> None:
    assert render_chart().kinds("StatefulSet") == []
    bundled = render_chart(SCENARIOS["bundled"])
    assert {s["metadata"]["name"] for s in bundled.kinds("StatefulSet")} == {
        "lf-labelfleet-redis",
        "lf-labelfleet-postgresql",
    }
    env = _env(_container(bundled.one("Deployment", "-worker"), "worker"))
    assert env["LABELFLEET_DB_URL"]["value"] == (
        "postgresql+psycopg://labelfleet:$(LF_BUNDLED_POSTGRES_PASSWORD)@lf-labelfleet-postgresql:5432/labelfleet"
    )
    # $(VAR) expansion only sees variables defined earlier in the list.
    names = list(env)
    assert names.index("LF_BUNDLED_POSTGRES_PASSWORD") < names.index("LABELFLEET_DB_URL")
    assert names.index("LF_BUNDLED_REDIS_PASSWORD") < names.index("LABELFLEET_BROKER_URL")


def test_config_values_become_env(render_chart) -> None:
    env = _env(_container(render_chart(SCENARIOS["external-secret"]).one("Deployment", "-worker"), "worker"))
    assert env["LABELFLEET_S3_ENDPOINT_URL"]["value"] == "https://minio.storage.svc.cluster.local:9000"
    assert env["LABELFLEET_TASK_HARD_TIME_LIMIT"]["value"] == "3600"
    assert env["LABELFLEET_LOG_JSON"]["value"] == "true"
    default_env = _env(_container(render_chart().one("Deployment", "-worker"), "worker"))
    assert "LABELFLEET_S3_ENDPOINT_URL" not in default_env  # empty = AWS, left out


def test_images_pin_appversion_and_digests(render_chart) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    default = _container(render_chart().one("Deployment", "-worker"), "worker")
    assert default["image"] == f"ghcr.io/labelfleet/labelfleet-worker:{chart['appVersion']}"
    pinned = _container(render_chart(SCENARIOS["external-secret"]).one("Deployment", "-worker"), "worker")
    assert pinned["image"].endswith("@sha256:" + "0" * 64)


# --- NOTES.txt ------------------------------------------------------------------------------------


def test_notes_render(run_helm, tmp_path: Path) -> None:
    """NOTES.txt is not rendered by `helm template`: render it through a throw-away copy of the chart."""
    chart = tmp_path / "labelfleet"
    shutil.copytree(CHART, chart)
    (chart / "files").mkdir()
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "files" / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "files/notes.txt") . | quote }}\n'
    )

    def notes(*args: str) -> str:
        proc = run_helm("template", "lf", str(chart), "--show-only", "templates/zz-notes.yaml", *args)
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)["data"]["notes"]

    default = notes()
    assert "kubectl -n default create secret generic lf-labelfleet" in default
    assert "pre-install/pre-upgrade hook" in default
    assert "scale deployment/lf-labelfleet-worker" in default
    keda = notes("-f", str(CI_VALUES / "keda-values.yaml"))
    assert "scaled by KEDA between 0 and 16" in keda and "port-forward svc/lf-labelfleet-flower" in keda
    bundled = notes("-f", str(CI_VALUES / "bundled-values.yaml"))
    assert "WARNING: the bundled Redis and PostgreSQL" in bundled and "post-install" in bundled
