output "bootstrap_servers" {
  description = "bootstrap.servers for Kafka clients in the VPC."
  value       = "${aws_lb.bootstrap.dns_name}:9092"
}

output "metadata_url" {
  description = "--metadata for weir commands (weir partitions, weir scaler status)."
  value       = local.metadata
}

output "gateway_role_arn" {
  description = "IAM role of the gateways (also usable for IRSA on EKS)."
  value       = aws_iam_role.gateway.arn
}

output "bucket" {
  value = aws_s3_bucket.data.bucket
}
