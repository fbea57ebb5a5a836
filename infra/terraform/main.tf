# Weir on AWS: record batches in S3, metadata in DynamoDB, gateways as an ECS (Fargate)
# service behind a network load balancer, and `weir scaler` scaling that service.
#
# Kafka clients bootstrap through the load balancer; every gateway advertises its own task
# address (clients then talk to each partition's leader directly), so clients must reach the
# task subnets (run them in the VPC or a peered network).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

locals {
  metadata     = "dynamodb://${var.name}"
  object_store = "s3://${aws_s3_bucket.data.bucket}/weir"
}

# -- storage -------------------------------------------------------------------------------
resource "aws_s3_bucket" "data" {
  bucket = var.bucket_name
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Multipart uploads a crash left behind.
resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# -- metadata (the tables `weir metadata init` would create) ---------------------------------
resource "aws_dynamodb_table" "meta" {
  name         = "${var.name}-meta"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"
  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }
  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "index" {
  name         = "${var.name}-index"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"
  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "N"
  }
  point_in_time_recovery {
    enabled = true
  }
}

# -- IAM -----------------------------------------------------------------------------------
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "data_access" {
  statement {
    sid       = "Objects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.data.arn}/*"]
  }
  statement {
    sid       = "Listing"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid = "Metadata"
    actions = [
      "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
      "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem",
      "dynamodb:TransactWriteItems", "dynamodb:TransactGetItems", "dynamodb:ConditionCheckItem",
      "dynamodb:DescribeTable",
    ]
    resources = [aws_dynamodb_table.meta.arn, aws_dynamodb_table.index.arn]
  }
}

resource "aws_iam_role" "gateway" {
  name               = "${var.name}-gateway"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "gateway" {
  name   = "data"
  role   = aws_iam_role.gateway.id
  policy = data.aws_iam_policy_document.data_access.json
}

data "aws_iam_policy_document" "scaler" {
  statement {
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = [aws_ecs_service.gateway.id]
  }
  statement {
    actions = [
      "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
      "dynamodb:Query", "dynamodb:DescribeTable",
    ]
    resources = [aws_dynamodb_table.meta.arn, aws_dynamodb_table.index.arn]
  }
}

resource "aws_iam_role" "scaler" {
  name               = "${var.name}-scaler"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "scaler" {
  name   = "scale"
  role   = aws_iam_role.scaler.id
  policy = data.aws_iam_policy_document.scaler.json
}

# -- network -------------------------------------------------------------------------------
resource "aws_security_group" "gateway" {
  name        = "${var.name}-gateway"
  description = "Kafka clients to weir gateways"
  vpc_id      = var.vpc_id

  ingress {
    description = "Kafka"
    from_port   = 9092
    to_port     = 9092
    protocol    = "tcp"
    cidr_blocks = var.client_cidrs
  }

  egress {
    description = "S3, DynamoDB, ECR, CloudWatch"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_lb" "bootstrap" {
  name               = "${var.name}-bootstrap"
  load_balancer_type = "network"
  internal           = true
  subnets            = var.subnet_ids
}

resource "aws_lb_target_group" "kafka" {
  name        = "${var.name}-kafka"
  port        = 9092
  protocol    = "TCP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  # A stopping gateway hands its partitions over within seconds.
  deregistration_delay = 30
  health_check {
    protocol = "TCP"
    interval = 10
  }
}

resource "aws_lb_listener" "kafka" {
  load_balancer_arn = aws_lb.bootstrap.arn
  port              = 9092
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.kafka.arn
  }
}

# -- compute -------------------------------------------------------------------------------
resource "aws_ecs_cluster" "weir" {
  name = var.name
}

resource "aws_cloudwatch_log_group" "weir" {
  name              = "/ecs/${var.name}"
  retention_in_days = 14
}

resource "aws_ecs_task_definition" "gateway" {
  family                   = "${var.name}-gateway"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.gateway_cpu
  memory                   = var.gateway_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.gateway.arn
  container_definitions = jsonencode([{
    name       = "gateway"
    image      = var.image
    essential  = true
    entryPoint = ["/bin/sh", "-c"]
    # Each task advertises its own address: clients reach every partition's leader.
    command = [
      "exec weir gateway --listen 0.0.0.0:9092 --advertise \"$(hostname -i | cut -d' ' -f1):9092\" --data-dir /var/lib/weir/data --log-format json"
    ]
    environment = [
      { name = "WEIR_METADATA", value = local.metadata },
      { name = "WEIR_OBJECT_STORE", value = local.object_store },
      { name = "AWS_REGION", value = var.region },
    ]
    portMappings = [{ containerPort = 9092, protocol = "tcp" }]
    stopTimeout  = 60
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.weir.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "gateway"
      }
    }
  }])
}

resource "aws_ecs_service" "gateway" {
  name            = "${var.name}-gateway"
  cluster         = aws_ecs_cluster.weir.id
  task_definition = aws_ecs_task_definition.gateway.arn
  desired_count   = var.min_gateways
  launch_type     = "FARGATE"

  network_configuration {
    subnets         = var.subnet_ids
    security_groups = [aws_security_group.gateway.id]
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.kafka.arn
    container_name   = "gateway"
    container_port   = 9092
  }

  # The scaler owns the desired count.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.kafka]
}

resource "aws_security_group" "scaler" {
  name        = "${var.name}-scaler"
  description = "weir scaler: outbound only"
  vpc_id      = var.vpc_id

  egress {
    description = "DynamoDB, ECS, CloudWatch"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_ecs_task_definition" "scaler" {
  family                   = "${var.name}-scaler"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.scaler.arn
  container_definitions = jsonencode([{
    name      = "scaler"
    image     = var.image
    essential = true
    command = [
      "scaler", "--launcher", "ecs",
      "--ecs-cluster", aws_ecs_cluster.weir.name,
      "--ecs-service", "${var.name}-gateway",
      "--metadata", local.metadata,
      "--min-gateways", tostring(var.min_gateways),
      "--max-gateways", tostring(var.max_gateways),
      "--target-bytes-per-sec", tostring(var.target_bytes_per_sec),
    ]
    environment = [{ name = "AWS_REGION", value = var.region }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.weir.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "scaler"
      }
    }
  }])
}

resource "aws_ecs_service" "scaler" {
  name            = "${var.name}-scaler"
  cluster         = aws_ecs_cluster.weir.id
  task_definition = aws_ecs_task_definition.scaler.arn
  desired_count   = 1
  launch_type     = "FARGATE"

  network_configuration {
    subnets         = var.subnet_ids
    security_groups = [aws_security_group.scaler.id]
  }
}
