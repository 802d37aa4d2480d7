"""The shipped cluster configs, checked offline against real schemas.

Launcher YAMLs (cluster/aws.yaml, cluster/gcp.yaml): Ray's own cluster-config schema (``prepare_config`` +
``validate_config``, as ``ray up`` does before touching the cloud), then each ``node_config`` against the cloud API it
is passed to: EC2 RunInstances (botocore's service model) and the GCE Instance resource (the compute v1 discovery
document shipped with google-api-python-client).

KubeRay manifests (cluster/kuberay/): core objects (Deployment, Service, PVC, NetworkPolicy) and every Ray pod
template against the Kubernetes OpenAPI schemas of ``kubernetes-validate`` (strict: unknown keys rejected). No pip
package ships the KubeRay CRD schema, so the RayCluster / RayJob fields are checked against ``KUBERAY_V1`` below: a
structural JSON schema transcribed from KubeRay's v1 API types (ray-operator/apis/ray/v1, v1.5.1, the first release
with ``authOptions``), with unknown keys rejected at every KubeRay level.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHERS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
BUCKET_SCHEME = {"aws": "s3", "gcp": "gs"}
KUBERAY = CLUSTER / "kuberay"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(name: str) -> dict:
    return prepare_config(copy.deepcopy(load(LAUNCHERS[name])))


def commands(cfg: dict, key: str) -> str:
    return "\n".join(cfg[key])


# ---------------------------------------------------------------- launcher YAMLs: schemas

@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config_passes_ray_schema(name):
    validate_config(prepared(name))


def test_ray_schema_rejects_a_misspelled_key():
    cfg = load(LAUNCHERS["aws"])
    cfg["available_node_types"]["gpu_small"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(cfg))


def commented_docker_section(path: Path) -> dict:
    """The ``# docker:`` block, uncommented: the documented alternative to pip must be valid too."""
    lines, block = path.read_text().splitlines(), []
    start = lines.index("# docker:")
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    return yaml.safe_load("\n".join(block))


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_commented_docker_section_passes_ray_schema(name):
    cfg = load(LAUNCHERS[name])
    cfg.update(commented_docker_section(LAUNCHERS[name]))
    assert cfg["docker"]["image"] and cfg["docker"]["container_name"]
    validate_config(prepare_config(cfg))


def test_aws_node_configs_are_valid_run_instances_requests():
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    shape = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in load(LAUNCHERS["aws"])["available_node_types"].items():
        request = {**node_type["node_config"], "MinCount": 1, "MaxCount": 1}  # Ray adds the counts
        report = ParamValidator().validate(request, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def gce_check(value, schema: dict, schemas: dict, where: str) -> list[str]:
    """Unknown keys and wrong JSON types against a discovery-document schema (recursively)."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"]]
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {value!r}"]
        errors = []
        for key, sub in value.items():
            if key not in schema["properties"]:
                errors.append(f"{where}.{key}: not a field of the GCE API")
            else:
                errors += gce_check(sub, schema["properties"][key], schemas, f"{where}.{key}")
        return errors
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {value!r}"]
        return [e for i, item in enumerate(value) for e in gce_check(item, schema["items"], schemas, f"{where}[{i}]")]
    if kind == "string" and "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    return []


def test_gcp_node_configs_are_valid_compute_instances():
    googleapiclient = pytest.importorskip("googleapiclient")
    doc = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "compute.v1.json"
    schemas = json.loads(doc.read_text())["schemas"]
    for name, node_type in load(LAUNCHERS["gcp"])["available_node_types"].items():
        assert gce_check(node_type["node_config"], schemas["Instance"], schemas, name) == []


def test_gce_check_rejects_a_misspelled_key():
    googleapiclient = pytest.importorskip("googleapiclient")
    doc = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "compute.v1.json"
    schemas = json.loads(doc.read_text())["schemas"]
    assert gce_check({"machineTyp": "n2-standard-8"}, schemas["Instance"], schemas, "x")


# ---------------------------------------------------------------- launcher YAMLs: what they promise

@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_has_cpu_head_and_small_and_large_gpu_workers(name):
    cfg = prepared(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpus = sorted(t["resources"]["GPU"] for n, t in types.items() if n != cfg["head_node_type"])
    assert len(gpus) >= 2 and gpus[0] < gpus[-1], "small and large GPU worker shapes"
    for node_type in types.values():
        assert node_type["min_workers"] <= node_type["max_workers"]
    assert sum(t["min_workers"] for t in types.values()) <= cfg["max_workers"]


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_opens_no_port_to_the_world(name):
    text = LAUNCHERS[name].read_text()
    assert "0.0.0.0" not in text
    cfg = prepared(name)
    head_start = commands(cfg, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head_start
    assert re.search(r"mlflow server --host 127\.0\.0\.1 ", head_start)
    for node_name, node_type in cfg["available_node_types"].items():
        node_config = node_type["node_config"]
        if name == "aws":  # with no SecurityGroupIds Ray makes a group that admits SSH from 0.0.0.0/0
            assert node_config.get("SecurityGroupIds"), node_name
        else:  # the project's default network admits SSH from anywhere: a network of its own
            assert all(nic["subnetwork"].endswith("/subnetworks/hsakd-ray")
                       for nic in node_config["networkInterfaces"]), node_name


@pytest.mark.parametrize("script", ["aws_security_group.sh", "gcp_network.sh"])
def test_network_scripts_admit_ssh_from_the_admin_only(script):
    text = (CLUSTER / "scripts" / script).read_text()
    assert "0.0.0.0" not in text and "ADMIN_CIDR:?" in text and "*/0)" in text


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_turns_token_auth_on_for_every_node(name):
    cfg = prepared(name)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        ray_start = next(c for c in cfg[key] if "ray start" in c)
        assert "export RAY_AUTH_MODE=token" in ray_start
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # from the user's machine, not the repo
    assert "export RAY_AUTH_MODE=token" in commands(cfg, "setup_commands")  # drivers run with ray job submit


def test_no_secret_is_committed_under_cluster():
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\b[0-9a-f]{64}\b", text), f"{path} holds what looks like a Ray token"
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path} holds an AWS access key"
            assert not re.search(r"postgres(ql)?://[^\s:@/]+:[^\s@/]+@", text), f"{path} holds a database password"


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_results_and_mlflow_artifacts_share_one_bucket(name):
    cfg = prepared(name)
    scheme = BUCKET_SCHEME[name]
    results = re.search(rf"HSAKD_RESULTS=({scheme}://([^/\s']+)/\S+?)'", commands(cfg, "setup_commands"))
    artifacts = re.search(rf"--artifacts-destination {scheme}://([^/\s]+)/", commands(cfg, "head_start_ray_commands"))
    assert results and artifacts and results.group(2) == artifacts.group(1)
    assert "--backend-store-uri" in commands(cfg, "head_start_ray_commands")


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_setup_installs_hsakd_ray_with_this_ray_version(name):
    setup = commands(prepared(name), "setup_commands")
    assert f'"ray[default,tune,train]=={ray.__version__}"' in setup
    assert "~/hsakd-ray-dist/hsakd_ray-*.whl" in setup


# ---------------------------------------------------------------- KubeRay manifests

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"type": "object"}  # checked separately against the Kubernetes PodTemplateSpec schema
_WORKER_GROUP = {
    "type": "object", "additionalProperties": False, "required": ["groupName", "rayStartParams", "template"],
    "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0},
                   "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 0},
                   "idleTimeoutSeconds": {"type": "integer"}, "numOfHosts": {"type": "integer", "minimum": 1},
                   "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE, "suspend": {"type": "boolean"},
                   "scaleStrategy": {"type": "object"}, "labels": _STR_MAP, "resources": _STR_MAP},
}
_CLUSTER_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
        "authOptions": {"type": "object", "additionalProperties": False,
                        "properties": {"mode": {"enum": ["disabled", "token"]}}},
        "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
            k: {} for k in ("resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                            "upscalingMode", "version", "env", "envFrom", "volumeMounts")}},
        "headGroupSpec": {"type": "object", "additionalProperties": False, "required": ["template"],
                          "properties": {"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                                         "headService": {"type": "object"}, "enableIngress": {"type": "boolean"},
                                         "rayStartParams": _STR_MAP, "template": _POD_TEMPLATE,
                                         "labels": _STR_MAP, "resources": _STR_MAP}},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
        "headServiceAnnotations": _STR_MAP, "suspend": {"type": "boolean"}, "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": {"type": "object"}, "upgradeStrategy": {"type": "object"},
    },
}
_JOB_SPEC = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "clusterSelector": _STR_MAP, "rayClusterSpec": _CLUSTER_SPEC, "submitterPodTemplate": _POD_TEMPLATE,
        "submitterConfig": {"type": "object", "additionalProperties": False,
                            "properties": {"backoffLimit": {"type": "integer", "minimum": 0}}},
        "metadata": _STR_MAP, "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": {"type": "integer", "minimum": 0}, "shutdownAfterJobFinishes": {"type": "boolean"},
        "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0}, "suspend": {"type": "boolean"},
        "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"}, "deletionStrategy": {"type": "object"},
        "managedBy": {"type": "string"},
    },
}
KUBERAY_V1 = {
    "RayCluster": _CLUSTER_SPEC,
    "RayJob": _JOB_SPEC,
}


def manifests() -> list[tuple[str, dict]]:
    return [(p.name, doc) for p in sorted(KUBERAY.glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text())
            if doc]


def of_kind(kind: str) -> dict:
    return next(doc for _, doc in manifests() if doc["kind"] == kind)


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec") or {}
    found = [("head", spec["headGroupSpec"]["template"])] if spec else []
    found += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and doc["spec"].get("submitterPodTemplate"):
        found.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return found


def test_manifests_have_known_api_versions_and_kinds():
    allowed = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("v1", "Service"),
               ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment"), ("networking.k8s.io/v1", "NetworkPolicy")}
    kinds = [(doc["apiVersion"], doc["kind"]) for _, doc in manifests()]
    assert set(kinds) <= allowed
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim"} <= {k for _, k in kinds}
    assert all(doc["metadata"]["name"] for _, doc in manifests())


def test_core_objects_pass_kubernetes_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for _, doc in manifests():
        if doc["apiVersion"] != "ray.io/v1":
            kubernetes_validate.validate(doc, "1.33", strict=True)


def test_ray_pod_templates_pass_kubernetes_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for _, doc in manifests():
        for group, template in pod_templates(doc):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
            kubernetes_validate.validate(wrapped, "1.33", strict=True)


@pytest.mark.parametrize("kind", sorted(KUBERAY_V1))
def test_kuberay_resources_match_kuberay_v1_fields(kind):
    jsonschema.validate(of_kind(kind)["spec"], KUBERAY_V1[kind])


def test_kuberay_schema_rejects_a_misspelled_field():
    spec = copy.deepcopy(of_kind("RayCluster")["spec"])
    spec["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(spec, KUBERAY_V1["RayCluster"])


def test_raycluster_has_token_auth_and_gpu_worker_groups():
    cluster = of_kind("RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    gpus = []
    for group in cluster["spec"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"], group["groupName"]
        gpus.append(int(limits["nvidia.com/gpu"]))
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    assert len(gpus) >= 2 and min(gpus) >= 1 and min(gpus) < max(gpus)
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]


def test_rayjob_runs_a_shipped_search_space_on_the_raycluster():
    from hsakd_ray.tune.space import load_space

    job, cluster = of_kind("RayJob"), of_kind("RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entry = job["spec"]["entrypoint"]
    match = re.search(r"hsakd-ray tune (search_spaces/\S+\.yaml) --address auto --tracking-uri http://mlflow:5000",
                      entry)
    assert match, entry
    load_space(ROOT / match.group(1))  # shipped and valid


def test_mlflow_is_a_cluster_internal_service_on_a_persistent_volume():
    service, deployment, pvc = of_kind("Service"), of_kind("Deployment"), of_kind("PersistentVolumeClaim")
    assert service["metadata"]["name"] == "mlflow" and service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 5000
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
    assert f"sqlite:///{mount}/mlflow.db" in " ".join(pod["containers"][0]["args"])


def test_credentials_only_from_secrets():
    secret_like = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL|BACKEND_STORE_URI")
    for _, doc in manifests():
        templates = [t for _, t in pod_templates(doc)]
        if doc["kind"] == "Deployment":
            templates.append(doc["spec"]["template"])
        for template in templates:
            for container in template["spec"]["containers"]:
                for env in container.get("env", []):
                    if secret_like.search(env["name"]):
                        assert "secretKeyRef" in env.get("valueFrom", {}), f"{env['name']} is not from a Secret"
                for source in container.get("envFrom", []):
                    assert "secretRef" in source


def test_image_placeholders_match_the_dockerfile():
    images = {c["image"] for _, doc in manifests() for _, t in pod_templates(doc) for c in t["spec"]["containers"]}
    images.add(of_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"])
    assert images == {"REGISTRY/hsakd-ray:0.1.0-gpu"}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile
    assert "REGISTRY/hsakd-ray:0.1.0-gpu" in dockerfile
