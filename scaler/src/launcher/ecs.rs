//! The ECS launcher: the gateways are an ECS service, and the launcher sets its desired
//! count (`weir scaler --launcher ecs`).

use super::Launcher;
use anyhow::{Context, Result};
use async_trait::async_trait;

/// Scales an ECS service: the desired count is the number of gateways; ECS stops tasks
/// with SIGTERM, so a gateway hands its partitions over before it exits.
#[derive(Debug)]
pub struct EcsLauncher {
    client: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
}

impl EcsLauncher {
    pub async fn connect(cluster: String, service: String, endpoint: Option<String>) -> Self {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let mut config = loader.load().await;
        if config.region().is_none() {
            config = config
                .into_builder()
                .region(aws_config::Region::from_static("us-east-1"))
                .build();
        }
        EcsLauncher {
            client: aws_sdk_ecs::Client::new(&config),
            cluster,
            service,
        }
    }
}

#[async_trait]
impl Launcher for EcsLauncher {
    fn name(&self) -> String {
        format!("ecs:{}/{}", self.cluster, self.service)
    }

    async fn current(&self) -> Result<usize> {
        let out = self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "ECS DescribeServices: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&e)
                )
            })?;
        let service = out.services().first().with_context(|| {
            format!("ECS service {} not found in {}", self.service, self.cluster)
        })?;
        Ok(service.desired_count().max(0) as usize)
    }

    async fn set(&self, count: usize) -> Result<()> {
        self.client
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .desired_count(i32::try_from(count).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "ECS UpdateService: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&e)
                )
            })?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The ECS launcher against the AWS-compatible server of the test set-up (moto):
    /// a service's desired count follows `set`, and `current` reads it back.
    #[tokio::test]
    async fn ecs_launcher_sets_the_desired_count() -> anyhow::Result<()> {
        let Ok(endpoint) = std::env::var("WEIR_TEST_DYNAMODB_ENDPOINT") else {
            eprintln!("skipped: WEIR_TEST_DYNAMODB_ENDPOINT is not set (scripts/test.sh sets it)");
            return Ok(());
        };
        let cluster = format!("weir-{}", uuid::Uuid::new_v4().simple());
        let launcher =
            EcsLauncher::connect(cluster.clone(), "gateways".into(), Some(endpoint)).await;
        let c = &launcher.client;
        c.create_cluster().cluster_name(&cluster).send().await?;
        c.register_task_definition()
            .family("weir-gateway")
            .container_definitions(
                aws_sdk_ecs::types::ContainerDefinition::builder()
                    .name("weir")
                    .image("weir:latest")
                    .memory(512)
                    .build(),
            )
            .send()
            .await?;
        c.create_service()
            .cluster(&cluster)
            .service_name("gateways")
            .task_definition("weir-gateway")
            .desired_count(1)
            .send()
            .await?;
        assert_eq!(launcher.current().await?, 1);
        launcher.set(3).await?;
        assert_eq!(launcher.current().await?, 3);
        launcher.set(2).await?;
        assert_eq!(launcher.current().await?, 2);
        Ok(())
    }
}
