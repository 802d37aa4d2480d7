#!/usr/bin/env bash
# Create the VPC that cluster/gcp.yaml puts its nodes on: subnet hsakd-ray, all traffic within the subnet (Ray, the
# object store, MLflow on the head), SSH from ADMIN_CIDR only. The project's default network is not used: its
# default-allow-ssh rule admits the whole internet.
#   PROJECT=my-project ADMIN_CIDR=203.0.113.7/32 bash cluster/scripts/gcp_network.sh
set -euo pipefail
: "${PROJECT:?set PROJECT to your GCP project id}"
: "${ADMIN_CIDR:?set ADMIN_CIDR to your address, e.g. 203.0.113.7/32}"
REGION="${REGION:-us-central1}"
RANGE="${RANGE:-10.42.0.0/20}"
case "$ADMIN_CIDR" in */0) echo "ADMIN_CIDR $ADMIN_CIDR would open SSH to the world" >&2; exit 2;; esac
gcloud compute networks create hsakd-ray --project "$PROJECT" --subnet-mode custom
gcloud compute networks subnets create hsakd-ray --project "$PROJECT" --network hsakd-ray --region "$REGION" \
    --range "$RANGE"
gcloud compute firewall-rules create hsakd-ray-internal --project "$PROJECT" --network hsakd-ray \
    --direction INGRESS --allow tcp,udp,icmp --source-ranges "$RANGE"
gcloud compute firewall-rules create hsakd-ray-ssh-admin --project "$PROJECT" --network hsakd-ray \
    --direction INGRESS --allow tcp:22 --source-ranges "$ADMIN_CIDR"
