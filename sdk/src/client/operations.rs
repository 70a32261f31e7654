//! Every operation of the API as a typed method of [`NexusClient`]: domain
//! types in, typed answers out.

use std::net::SocketAddr;
use std::path::Path;

use zeroize::Zeroizing;

use super::nexus::{Consistency, Operation};
use super::{Error, NexusClient};
use crate::api::{
    AddMemberRequest, ClusterHealth, ClusterHealthRequest, ClusterLimitsRequest,
    ClusterMembersRequest, ClusterStatus, ClusterStatusRequest, CustomMetadata, DecryptRequest,
    DecryptResponse, DeletePolicyRequest, DeleteSecretRequest, DestroySecretRequest,
    EncryptRequest, EncryptResponse, GetPolicyRequest, GetRotationRequest, GetSecretRequest,
    ListPoliciesRequest, ListSecretsRequest, Member, Policy, PutPolicyRequest,
    PutSecretMetadataRequest, PutSecretRequest, RateLimits, RecoverRequest, RekeyRequest,
    RemoveMemberRequest, RestoreRequest, RestoreResponse, RotateRequest, RotationResponse,
    RotationSettings, Route, SecretMetadataRequest, SecretMetadataResponse, SecretValues,
    SecretVersions, SetLimitsRequest, SetRotationRequest, Shard, SnapshotRestoreResponse,
    TransferLeaderRequest, UndeleteSecretRequest, VerifyRequest, header,
};
use crate::crypto::{KeyShare, SecretBytes, ShareIndex};
use crate::domain::{NodeId, Permission, PolicyName, PolicyRef, SecretPath};

/// A version number as SPIKE's wire carries it (Go's `int`).
fn wire_version(version: u64) -> Result<i64, Error> {
    i64::try_from(version).map_err(|_| Error::BadRequest)
}

fn wire_versions(versions: &[u64]) -> Result<Vec<i64>, Error> {
    versions
        .iter()
        .map(|version| wire_version(*version))
        .collect()
}

impl NexusClient {
    /// Stores a new version of the secret at `path`; with `cas`, only if the
    /// current version is `cas` (0: only if there is none), else
    /// [`Error::Conflict`].
    pub async fn put_secret(
        &self,
        path: &SecretPath,
        values: &SecretValues,
        cas: Option<u64>,
    ) -> Result<(), Error> {
        let request = PutSecretRequest {
            path: path.to_string(),
            values: values.clone(),
            cas,
        };
        self.call(&request).await.map(drop)
    }

    /// The values of `path` at `version` (None: the current one),
    /// linearizable.
    pub async fn get_secret(
        &self,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<SecretValues, Error> {
        self.read_secret(path, version, Consistency::Leader).await
    }

    /// Like [`Self::get_secret`], from the first node that answers, which
    /// may be behind the leader.
    pub async fn get_secret_stale(
        &self,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<SecretValues, Error> {
        self.read_secret(path, version, Consistency::Stale).await
    }

    async fn read_secret(
        &self,
        path: &SecretPath,
        version: Option<u64>,
        consistency: Consistency,
    ) -> Result<SecretValues, Error> {
        let request = GetSecretRequest {
            path: path.to_string(),
            version: wire_version(version.unwrap_or(0))?,
        };
        let answer = self.call_with(&request, consistency).await?;
        answer
            .data
            .ok_or_else(|| Error::Decode("a secret answer without data".into()))
    }

    /// Marks `versions` of `path` deleted (empty: the current one).
    pub async fn delete_secret(&self, path: &SecretPath, versions: &[u64]) -> Result<(), Error> {
        let request = DeleteSecretRequest(Self::versions(path, versions)?);
        self.call(&request).await.map(drop)
    }

    /// Brings deleted `versions` back (empty: the current one).
    pub async fn undelete_secret(&self, path: &SecretPath, versions: &[u64]) -> Result<(), Error> {
        let request = UndeleteSecretRequest(Self::versions(path, versions)?);
        self.call(&request).await.map(drop)
    }

    /// Drops `versions` for good (extension; empty: the current one).
    pub async fn destroy_secret(&self, path: &SecretPath, versions: &[u64]) -> Result<(), Error> {
        let request = DestroySecretRequest(Self::versions(path, versions)?);
        self.call(&request).await.map(drop)
    }

    fn versions(path: &SecretPath, versions: &[u64]) -> Result<SecretVersions, Error> {
        Ok(SecretVersions {
            path: path.to_string(),
            versions: wire_versions(versions)?,
        })
    }

    /// Every secret path the caller may list, sorted.
    pub async fn list_secrets(&self) -> Result<Vec<SecretPath>, Error> {
        match self.call(&ListSecretsRequest {}).await {
            Ok(answer) => answer
                .keys
                .unwrap_or_default()
                .into_iter()
                .map(|key| {
                    SecretPath::try_from(key).map_err(|error| Error::Decode(error.to_string()))
                })
                .collect(),
            // SPIKE answers an empty store with 404.
            Err(Error::NotFound) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// The versions and metadata of `path` (never values); with `version`,
    /// only if that version exists.
    pub async fn secret_metadata(
        &self,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<SecretMetadataResponse, Error> {
        let request = SecretMetadataRequest {
            path: path.to_string(),
            version: wire_version(version.unwrap_or(0))?,
        };
        self.call(&request).await
    }

    /// Replaces the custom metadata of the secret at `path` (empty: clears
    /// it). The secret must exist.
    pub async fn put_secret_metadata(
        &self,
        path: &SecretPath,
        custom_metadata: CustomMetadata,
    ) -> Result<(), Error> {
        custom_metadata.check().map_err(Error::Invalid)?;
        let request = PutSecretMetadataRequest {
            path: path.to_string(),
            custom_metadata,
        };
        self.call(&request).await.map(drop)
    }

    /// Creates the policy `name`, or replaces it (keeping its id); returns
    /// its id.
    pub async fn put_policy(
        &self,
        name: &PolicyName,
        spiffeid_pattern: &str,
        path_pattern: &str,
        permissions: &[Permission],
    ) -> Result<String, Error> {
        let request = PutPolicyRequest {
            name: name.to_string(),
            spiffeid_pattern: spiffeid_pattern.to_owned(),
            path_pattern: path_pattern.to_owned(),
            permissions: permissions
                .iter()
                .map(|permission| permission.name().to_owned())
                .collect(),
        };
        Ok(self.call(&request).await?.id)
    }

    /// The policy named by `policy` (its id or its name).
    pub async fn get_policy(&self, policy: &PolicyRef) -> Result<Policy, Error> {
        let request = GetPolicyRequest {
            id: policy.to_string(),
        };
        Ok(self.call(&request).await?.policy)
    }

    /// Every policy, sorted by name.
    pub async fn list_policies(&self) -> Result<Vec<Policy>, Error> {
        self.list_policies_matching(&ListPoliciesRequest::default())
            .await
    }

    /// The policies whose SPIFFE ID pattern (else path pattern) is exactly
    /// the one `filter` gives.
    pub async fn list_policies_matching(
        &self,
        filter: &ListPoliciesRequest,
    ) -> Result<Vec<Policy>, Error> {
        match self.call(filter).await {
            Ok(answer) => Ok(answer.policies.unwrap_or_default()),
            // SPIKE answers "no policies" with 404.
            Err(Error::NotFound) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// Deletes the policy named by `policy` (its id or its name).
    pub async fn delete_policy(&self, policy: &PolicyRef) -> Result<(), Error> {
        let request = DeletePolicyRequest {
            id: policy.to_string(),
        };
        self.call(&request).await.map(drop)
    }

    /// Seals `plaintext` under the cluster's current data key (stream mode);
    /// returns the self-describing frame. Any node holding the root key
    /// serves it, so it is spread over the endpoints rather than sent to
    /// the leader.
    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let sealed = self
            .send_bytes(Route::CipherEncrypt, plaintext, Consistency::Stale)
            .await?;
        Ok(sealed.to_vec())
    }

    /// Opens a frame [`Self::encrypt`] returned; the plaintext is wiped on
    /// drop.
    pub async fn decrypt(&self, frame: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.send_bytes(Route::CipherDecrypt, frame, Consistency::Stale)
            .await
    }

    /// Encrypt in JSON mode: nonce and ciphertext apart.
    pub async fn encrypt_json(&self, request: &EncryptRequest) -> Result<EncryptResponse, Error> {
        self.call_with(request, Consistency::Stale).await
    }

    /// Decrypt in JSON mode.
    pub async fn decrypt_json(&self, request: &DecryptRequest) -> Result<DecryptResponse, Error> {
        self.call_with(request, Consistency::Stale).await
    }

    /// The shares of the current root key, for safekeeping offline (the
    /// recover role). Any replica holding the key answers alike.
    pub async fn recover(&self) -> Result<Vec<KeyShare>, Error> {
        let shards = self
            .call(&RecoverRequest {})
            .await?
            .shards
            .unwrap_or_default();
        shards
            .into_iter()
            .map(|(index, shard)| {
                let index = ShareIndex::new(index)
                    .map_err(|_| Error::Decode("a shard with index 0".into()))?;
                // Named step: the shard moves into its zeroizing wrapper.
                let value = SecretBytes::from_slice(shard.expose_secret())
                    .map_err(|_| Error::Decode("a shard that is not 32 bytes".into()))?;
                Ok(KeyShare::new(index, value))
            })
            .collect()
    }

    /// Feeds one restore shard to the leader (the restore role).
    pub async fn restore(&self, share: &KeyShare) -> Result<RestoreResponse, Error> {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(share.expose_secret());
        let request = RestoreRequest {
            id: i64::from(share.index().get()),
            shard: Some(Shard::new(bytes)),
        };
        zeroize::Zeroize::zeroize(&mut bytes);
        self.call(&request).await
    }

    /// Replaces the root key (extension, superusers): the leader makes a
    /// new one, re-wraps the keyring and hands the keepers new shares, with
    /// `shares` and `threshold` as the new n and t. Returns the new root
    /// key's id.
    pub async fn rekey(&self, shares: u8, threshold: u8) -> Result<u64, Error> {
        let request = RekeyRequest { shares, threshold };
        Ok(self.call(&request).await?.root_key_id)
    }

    /// Starts a new data key for new writes (extension, superusers);
    /// returns its id.
    pub async fn rotate_data_key(&self) -> Result<u32, Error> {
        Ok(self.call(&RotateRequest {}).await?.data_key_id)
    }

    /// The key rotation settings in force and the keys' state, as the
    /// leader sees them (extension, superusers).
    pub async fn rotation(&self) -> Result<RotationResponse, Error> {
        self.call(&GetRotationRequest {}).await
    }

    /// Sets the replicated key rotation settings, which override every
    /// replica's flags from then on (extension, superusers); returns the
    /// state after.
    pub async fn set_rotation(
        &self,
        settings: RotationSettings,
    ) -> Result<RotationResponse, Error> {
        self.call(&SetRotationRequest { settings }).await
    }

    /// SPIKE Bootstrap's check (the bootstrap role): the hex SHA-256 of the
    /// text sealed under the root key.
    pub async fn bootstrap_verify(&self, nonce: &[u8], ciphertext: &[u8]) -> Result<String, Error> {
        let request = VerifyRequest {
            nonce: nonce.to_vec(),
            ciphertext: ciphertext.to_vec(),
        };
        Ok(self.call(&request).await?.hash)
    }

    /// The cluster as the first node that answers sees it (superusers).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        self.call_with(&ClusterStatusRequest {}, Consistency::Stale)
            .await
    }

    /// Every replica and whether it votes (superusers).
    pub async fn cluster_members(&self) -> Result<Vec<Member>, Error> {
        Ok(self
            .call_with(&ClusterMembersRequest {}, Consistency::Stale)
            .await?
            .members)
    }

    /// The leader's autopilot health report (extension, superusers): each
    /// member's contact, lag and health, and the failure tolerance.
    pub async fn cluster_health(&self) -> Result<ClusterHealth, Error> {
        self.call_with(&ClusterHealthRequest {}, Consistency::Stale)
            .await
    }

    /// Adds a replica (extension, superusers): it joins as a learner, and
    /// the leader's autopilot makes it a voter once it has been healthy
    /// for the stabilization time (this returns before that). `id` must be new (ids of removed replicas
    /// are retired); the replica must already run with `--join` at these
    /// addresses.
    pub async fn add_member(
        &self,
        id: NodeId,
        cluster_addr: SocketAddr,
        api_addr: SocketAddr,
    ) -> Result<(), Error> {
        self.add(id, cluster_addr, api_addr, false).await
    }

    /// Adds a permanent non-voter (extension, superusers): a read replica
    /// that stays a learner, serves stale and linearizable reads, and never
    /// counts toward quorum. Needs a cluster that writes on-disk format 3.
    pub async fn add_non_voter(
        &self,
        id: NodeId,
        cluster_addr: SocketAddr,
        api_addr: SocketAddr,
    ) -> Result<(), Error> {
        self.add(id, cluster_addr, api_addr, true).await
    }

    async fn add(
        &self,
        id: NodeId,
        cluster_addr: SocketAddr,
        api_addr: SocketAddr,
        non_voter: bool,
    ) -> Result<(), Error> {
        let request = AddMemberRequest {
            id: id.get(),
            cluster_addr: cluster_addr.to_string(),
            api_addr: api_addr.to_string(),
            non_voter,
        };
        self.call(&request).await.map(drop)
    }

    /// Removes a voter (extension, superusers); its id is retired. A retry
    /// of a removal that already happened is refused as a bad request.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        let request = RemoveMemberRequest { id: id.get() };
        self.call(&request).await.map(drop)
    }

    /// Hands leadership to another voter (extension, superusers).
    pub async fn transfer_leader(&self, id: NodeId) -> Result<(), Error> {
        let request = TransferLeaderRequest { id: id.get() };
        self.call(&request).await.map(drop)
    }

    /// The cluster's rate limits, as committed (extension, superusers).
    pub async fn cluster_limits(&self) -> Result<RateLimits, Error> {
        Ok(self.call(&ClusterLimitsRequest {}).await?.limits)
    }

    /// Replaces the cluster's rate limits (extension, superusers); no rule
    /// removes every limit. Invalid limits are refused before sending.
    pub async fn set_cluster_limits(&self, limits: RateLimits) -> Result<(), Error> {
        limits.validate().map_err(Error::Invalid)?;
        self.call(&SetLimitsRequest { limits }).await.map(drop)
    }

    /// A backup of the encrypted store as it stands after everything
    /// committed so far (extension, superusers). Useless without the
    /// recovery shards of its root key.
    pub async fn snapshot_save(&self) -> Result<Vec<u8>, Error> {
        let backup = self
            .send_bytes(Route::SnapshotSave, &[], Consistency::Leader)
            .await?;
        Ok(backup.to_vec())
    }

    /// Writes a backup of the encrypted store, as [`Self::snapshot_save`]
    /// returns it, to the file at `out` (created or truncated, mode 0600)
    /// as it arrives, never whole in memory, refusing one over `limit`
    /// bytes; returns its length. Each attempt rewrites the file, so after
    /// an error its content is no backup.
    pub async fn snapshot_save_to(&self, out: &Path, limit: u64) -> Result<u64, Error> {
        let mut operation = Operation::new(
            Route::SnapshotSave,
            header::OCTET_STREAM,
            Zeroizing::new(Vec::new()),
            Consistency::Leader,
        );
        operation.download = Some((out, limit));
        self.send(operation).await?;
        tokio::fs::metadata(out)
            .await
            .map(|metadata| metadata.len())
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", out.display())))
    }

    /// Replaces the whole store with `backup` (extension, superusers),
    /// held in memory: for backups up to [`crate::api::BACKUP_SIZE_MAX_BYTES`];
    /// [`Self::snapshot_restore_file`] takes any size the cluster does.
    pub async fn snapshot_restore(&self, backup: &[u8]) -> Result<SnapshotRestoreResponse, Error> {
        let answer = self
            .send_bytes(Route::SnapshotRestore, backup, Consistency::Leader)
            .await?;
        crate::api::decode(&answer).map_err(|error| Error::Decode(error.to_string()))
    }

    /// Replaces the whole store with the backup in the file at `backup`,
    /// streamed from the file (never whole in memory); the cluster decides
    /// how large a backup it takes (its storage quota, at least 64 MiB).
    pub async fn snapshot_restore_file(
        &self,
        backup: &Path,
    ) -> Result<SnapshotRestoreResponse, Error> {
        tokio::fs::metadata(backup)
            .await
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", backup.display())))?;
        let mut operation = Operation::new(
            Route::SnapshotRestore,
            header::OCTET_STREAM,
            Zeroizing::new(Vec::new()),
            Consistency::Leader,
        );
        operation.upload = Some(backup);
        let answer = self.send(operation).await?;
        crate::api::decode(&answer).map_err(|error| Error::Decode(error.to_string()))
    }

    async fn send_bytes(
        &self,
        route: Route,
        body: &[u8],
        consistency: Consistency,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.send(Operation::new(
            route,
            header::OCTET_STREAM,
            Zeroizing::new(body.to_vec()),
            consistency,
        ))
        .await
    }
}
