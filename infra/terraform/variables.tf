variable "name" {
  description = "Name prefix of every resource, and the DynamoDB table prefix (tables <name>-meta and <name>-index)."
  type        = string
  default     = "weir"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "vpc_id" {
  description = "VPC the gateways run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the gateways, the scaler and the load balancer (one per availability zone)."
  type        = list(string)
}

variable "client_cidrs" {
  description = "Networks Kafka clients connect from."
  type        = list(string)
}

variable "image" {
  description = "The weir container image (built from infra/Dockerfile)."
  type        = string
}

variable "gateway_cpu" {
  description = "CPU units per gateway task."
  type        = number
  default     = 1024
}

variable "gateway_memory" {
  description = "Memory (MiB) per gateway task."
  type        = number
  default     = 2048
}

variable "min_gateways" {
  description = "Fewest gateways the scaler keeps."
  type        = number
  default     = 2
}

variable "max_gateways" {
  description = "Most gateways the scaler starts."
  type        = number
  default     = 12
}

variable "target_bytes_per_sec" {
  description = "Record bytes per second (in + out) per gateway the scaler aims for."
  type        = number
  default     = 50000000
}

variable "bucket_name" {
  description = "S3 bucket for record data (created)."
  type        = string
}
