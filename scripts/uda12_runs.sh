#!/bin/bash
# Every workdir behind docs/uda.md (issue 12), then its tables and figures. Each line is one
# `experiments.uda` run with the settings that differ from configs/uda.py:<pacs|elpv> as of this
# commit (generated from the workdirs' config.json files). Runs resume by record identity, so
# an interrupted script can simply be started again. About 5 h on 2 CPU cores of November's
# machine, about 18 h on 2026-12-05's Zen 1 (docs/uda.md, Time),
# plus about an hour there since the denominator / negatives lines run 3 seeds (Session 40).
#   bash scripts/uda12_runs.sh [runs/uda12]
set -e
R=${1:-runs/uda12}
go() { name=$1; cfg=$2; shift 2; echo "== $name"; python -m experiments.uda --config configs/uda.py:$cfg --workdir=$R/$name "$@"; }

go t_main pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.alignment=contrastive --config.uda.cluster=kmeans
go a_gmm pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.methods=cluster_psi --config.uda.cluster=gmm
go t_mmd pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=kmeans --config.uda.methods=cluster_psi
go t_refs_mmd pacs --config.cache_dir=$R/cache --config.uda.cluster=kmeans --config.uda.methods=all_target,oracle
go a_cluster_f pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=kmeans --config.uda.methods=cluster_f
go a_few_shot pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=kmeans --config.uda.methods=few_shot
go t_refs pacs --config.cache_dir=$R/cache --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=oracle,all_target
go t_grl pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.alignment=adversarial --config.uda.cluster=kmeans --config.uda.methods=cluster_psi
go a_meanshift pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=meanshift --config.uda.methods=cluster_psi
go t_elpv elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=source_only,cluster_psi,oracle,all_target
go t_elpv_mmd elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=kmeans --config.uda.methods=cluster_psi,oracle,all_target
go e_k2 elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi
go e_gmm elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.methods=cluster_psi --config.uda.cluster=gmm
go e_meanshift elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=meanshift --config.uda.methods=cluster_psi
go t_elpv_rev elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=source_only,cluster_psi,oracle,all_target
go t_elpv_rev_mmd elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.cluster=kmeans --config.uda.methods=cluster_psi,oracle,all_target
go e_k2_rev elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.data.source=poly --config.data.targets=mono --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi
go e_gmm_rev elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.methods=cluster_psi --config.uda.cluster=gmm
go e_meanshift_rev elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.data.source=poly --config.data.targets=mono --config.uda.cluster=meanshift --config.uda.methods=cluster_psi
go a_k2 pacs --config.cache_dir=$R/cache --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi
go a_k4 pacs --config.cache_dir=$R/cache --config.seeds=1 --config.uda.cluster=kmeans --config.uda.clusters=4 --config.uda.methods=cluster_psi
go a_k5 pacs --config.cache_dir=$R/cache --config.seeds=1 --config.uda.cluster=kmeans --config.uda.clusters=5 --config.uda.methods=cluster_psi
go a_k8 pacs --config.cache_dir=$R/cache --config.seeds=1 --config.uda.cluster=kmeans --config.uda.clusters=8 --config.uda.methods=cluster_psi
go t_cont0.05 pacs --config.cache_dir=$R/cache --config.data.contamination=0.05 --config.data.targets=cartoon --config.uda.cluster=kmeans --config.uda.methods=source_only,cluster_psi,oracle,all_target
go c_gmm0.05 pacs --config.cache_dir=$R/cache --config.data.contamination=0.05 --config.data.targets=cartoon --config.uda.methods=cluster_psi --config.uda.cluster=gmm
go c_meanshift0.05 pacs --config.cache_dir=$R/cache --config.data.contamination=0.05 --config.data.targets=cartoon --config.uda.cluster=meanshift --config.uda.methods=cluster_psi
go t_cont0.2 pacs --config.cache_dir=$R/cache --config.data.contamination=0.2 --config.data.targets=cartoon --config.uda.cluster=kmeans --config.uda.methods=source_only,cluster_psi,oracle,all_target
go c_gmm0.2 pacs --config.cache_dir=$R/cache --config.data.contamination=0.2 --config.data.targets=cartoon --config.uda.methods=cluster_psi --config.uda.cluster=gmm
go c_meanshift0.2 pacs --config.cache_dir=$R/cache --config.data.contamination=0.2 --config.data.targets=cartoon --config.uda.cluster=meanshift --config.uda.methods=cluster_psi
go t_cont0.3 pacs --config.cache_dir=$R/cache --config.data.contamination=0.3 --config.data.targets=cartoon --config.uda.cluster=kmeans --config.uda.methods=source_only,cluster_psi,oracle,all_target
go c_gmm0.3 pacs --config.cache_dir=$R/cache --config.data.contamination=0.3 --config.data.targets=cartoon --config.uda.methods=cluster_psi --config.uda.cluster=gmm
go c_meanshift0.3 pacs --config.cache_dir=$R/cache --config.data.contamination=0.3 --config.data.targets=cartoon --config.uda.cluster=meanshift --config.uda.methods=cluster_psi
go c_k20.05 pacs --config.cache_dir=$R/cache --config.data.contamination=0.05 --config.data.targets=cartoon --config.seeds=1 --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi
go c_k20.2 pacs --config.cache_dir=$R/cache --config.data.contamination=0.2 --config.data.targets=cartoon --config.seeds=1 --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi
go c_k20.3 pacs --config.cache_dir=$R/cache --config.data.contamination=0.3 --config.data.targets=cartoon --config.seeds=1 --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi
go con_neg pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.contrastive=negatives --config.uda.methods=cluster_psi,oracle --config.uda.negatives=outside
go far05_neg pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.contrastive=negatives --config.uda.methods=cluster_psi --config.uda.negative_share=0.05
go far10_neg pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.contrastive=negatives --config.uda.methods=cluster_psi
go con_nce pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=cluster_psi,oracle --config.uda.negatives=outside
go far05_nce pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=cluster_psi --config.uda.negative_share=0.05
go far10_nce pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=cluster_psi
go far20 pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=cluster_psi --config.uda.negative_share=0.2
go far10_sph pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=cluster_psi --config.uda.space=sphere
go far10_k2 pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi
go far10_t005_l01 pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.seeds=1 --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.lambda_uda=0.1 --config.uda.methods=cluster_psi --config.uda.tau=0.05
go far10_t005_l1 pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.seeds=1 --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=cluster_psi --config.uda.tau=0.05
go far10_l01 pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.seeds=1 --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.lambda_uda=0.1 --config.uda.methods=cluster_psi
go far10_t05_l01 pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.seeds=1 --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.lambda_uda=0.1 --config.uda.methods=cluster_psi --config.uda.tau=0.5
go far10_t05 pacs --config.cache_dir=$R/cache --config.data.targets=cartoon --config.seeds=1 --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.methods=cluster_psi --config.uda.tau=0.5
go e_abl elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=kmeans --config.uda.methods=cluster_f,few_shot
go e_k4 elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=kmeans --config.uda.clusters=4 --config.uda.methods=cluster_psi
go e_k5 elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=kmeans --config.uda.clusters=5 --config.uda.methods=cluster_psi
go e_k8 elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=kmeans --config.uda.clusters=8 --config.uda.methods=cluster_psi
go e_grl elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.alignment=adversarial --config.uda.cluster=kmeans --config.uda.methods=cluster_psi
go e_abl_rev elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.data.source=poly --config.data.targets=mono --config.uda.cluster=kmeans --config.uda.methods=cluster_f,few_shot
go e_k4_rev elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.data.source=poly --config.data.targets=mono --config.uda.cluster=kmeans --config.uda.clusters=4 --config.uda.methods=cluster_psi
go e_k5_rev elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.data.source=poly --config.data.targets=mono --config.uda.cluster=kmeans --config.uda.clusters=5 --config.uda.methods=cluster_psi
go e_k8_rev elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.data.source=poly --config.data.targets=mono --config.uda.cluster=kmeans --config.uda.clusters=8 --config.uda.methods=cluster_psi
go e_grl_rev elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.data.source=poly --config.data.targets=mono --config.uda.alignment=adversarial --config.uda.cluster=kmeans --config.uda.methods=cluster_psi
# the trimmed dominant set (the default since 2026-11-24; docs/uda.md, "Trimmed D")
go a_trim pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=trimmed --config.uda.methods=cluster_psi
go e_trim elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=trimmed --config.uda.methods=cluster_psi
go e_trim_rev elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.cluster=trimmed --config.uda.methods=cluster_psi
go c_trim0.05 pacs --config.cache_dir=$R/cache --config.data.contamination=0.05 --config.data.targets=cartoon --config.uda.cluster=trimmed --config.uda.methods=cluster_psi
go c_trim0.2 pacs --config.cache_dir=$R/cache --config.data.contamination=0.2 --config.data.targets=cartoon --config.uda.cluster=trimmed --config.uda.methods=cluster_psi
go c_trim0.3 pacs --config.cache_dir=$R/cache --config.data.contamination=0.3 --config.data.targets=cartoon --config.uda.cluster=trimmed --config.uda.methods=cluster_psi
go t_trim_cont pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=contrastive --config.uda.methods=cluster_psi,source_only
go e_trim_cont elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=contrastive --config.uda.methods=cluster_psi,source_only
go e_trim_cont_rev elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=contrastive --config.uda.methods=cluster_psi,source_only

# trimmed D through Tables 3 and 6 and the ELPV ablations (docs/uda.md, 2026-12-06, Session 30;
# p_trim_f, p_trim_f_con and p_trim_grl at 10 seeds since Session 33/34: the workdir resumes, seeds 0-2 are reused)
go p_trim_grl pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=adversarial --config.uda.methods=cluster_psi
go p_trim_f pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=trimmed --config.uda.methods=cluster_f
go p_trim_f_con pacs --config.cache_dir=$R/cache --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=contrastive --config.uda.methods=cluster_f
go p_trim_con pacs --config.cache_dir=$R/cache --config.uda.cluster=trimmed --config.uda.alignment=contrastive --config.uda.methods=cluster_psi
go e_trim_grl elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=adversarial --config.uda.methods=cluster_psi
go e_trim_f elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=trimmed --config.uda.methods=cluster_f
go e_trim_f_con elpv --config.cache_dir=$R/cache_elpv --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=contrastive --config.uda.methods=cluster_f
go e_trim_grl_rev elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=adversarial --config.uda.methods=cluster_psi
go e_trim_f_rev elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.cluster=trimmed --config.uda.methods=cluster_f
go e_trim_f_con_rev elpv --config.cache_dir=$R/cache_elpv --config.data.source=poly --config.data.targets=mono --config.seeds=10 --config.uda.cluster=trimmed --config.uda.alignment=contrastive --config.uda.methods=cluster_f
# the paper's method with the paper's K = 2 and the contrastive loss (Art painting, 10 seeds, with source-only)
go t_k2_con pacs --config.cache_dir=$R/cache --config.seeds=10 --config.data.targets=art_painting --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi,source_only
go t_k2_con_cs pacs --config.cache_dir=$R/cache --config.seeds=10 --config.data.targets=cartoon,sketch --config.uda.alignment=contrastive --config.uda.cluster=kmeans --config.uda.clusters=2 --config.uda.methods=cluster_psi,source_only

# the tables (docs/uda.md) and the two figures
bash scripts/uda12_tables.sh "$R"
