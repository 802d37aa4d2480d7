#!/usr/bin/env bash
# Create the security group that cluster/aws.yaml names (SecurityGroupIds): all traffic between members of the group
# (Ray, the object store, MLflow on the head), SSH from ADMIN_CIDR only, nothing from anywhere else.
#   ADMIN_CIDR=203.0.113.7/32 VPC_ID=vpc-0123 bash cluster/scripts/aws_security_group.sh   -> prints sg-...
set -euo pipefail
: "${ADMIN_CIDR:?set ADMIN_CIDR to your address, e.g. $(curl -s https://checkip.amazonaws.com)/32}"
: "${VPC_ID:?set VPC_ID (aws ec2 describe-vpcs --filters Name=is-default,Values=true)}"
REGION="${AWS_REGION:-us-west-2}"
case "$ADMIN_CIDR" in */0) echo "ADMIN_CIDR $ADMIN_CIDR would open SSH to the world" >&2; exit 2;; esac
SG=$(aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC_ID" --group-name hsakd-ray \
      --description "hsakd-ray: intra-cluster traffic, SSH from the admin only" --query GroupId --output text)
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG" \
    --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$SG}]" >/dev/null
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG" \
    --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$ADMIN_CIDR}]" >/dev/null
echo "$SG"
