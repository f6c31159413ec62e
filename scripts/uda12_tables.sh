#!/bin/bash
# The tables of docs/uda.md (issue 12) and its two figures, from the workdirs of scripts/uda12_runs.sh.
#   bash scripts/uda12_tables.sh [runs/uda12] > tables.md
R=${1:-runs/uda12}
T() { echo; echo "### $1"; echo; echo '```'; echo "python -m experiments.uda_tables $(printf '"%s" ' "${@:2}")" | sed 's/ $//'; echo '```'; echo; python -m experiments.uda_tables "${@:2}" 2>/dev/null | tail -n +3; }
T "TABLE5" "=$R/t_main@source_only" "MMD, GMM (former default)=$R/a_gmm" "MMD, K-means=$R/t_mmd" "contrastive, K-means=$R/t_main@cluster_psi"
T "TABLE3_MMD" "=$R/t_main@source_only" "MMD=$R/t_refs_mmd" "MMD=$R/a_cluster_f" "MMD=$R/t_mmd" "MMD, GMM=$R/a_gmm" "MMD=$R/a_few_shot" --methods source_only,all_target,cluster_f,cluster_psi,few_shot,oracle --seeds 0,1,2
T "TABLE3_10" "=$R/t_main@source_only" "MMD=$R/a_cluster_f" "MMD=$R/t_mmd" "MMD=$R/a_few_shot" --methods source_only,cluster_f,cluster_psi,few_shot
T "TABLE3_CON" "=$R/t_main@source_only" "contrastive=$R/t_refs" "contrastive=$R/t_main@cluster_psi" --seeds 0,1,2
T "TABLE6" "MMD=$R/t_mmd" "contrastive=$R/t_main" "GRL=$R/t_grl" --methods cluster_psi --seeds 0,1,2
T "TABLE6_10" "MMD=$R/t_mmd" "contrastive=$R/t_main" "GRL=$R/t_grl" --methods cluster_psi
T "TABLE7" "K-means=$R/t_mmd" "GMM=$R/a_gmm" "MeanShift=$R/a_meanshift" --methods cluster_psi --seeds 0,1,2
T "TABLE7_10" "K-means=$R/t_mmd" "GMM=$R/a_gmm" "MeanShift=$R/a_meanshift" --methods cluster_psi
T "TABLE7_ELPV" "=$R/t_elpv@source_only" "K-means=$R/t_elpv_mmd@cluster_psi,all_target" "K-means, K=2=$R/e_k2" "GMM=$R/e_gmm" "MeanShift=$R/e_meanshift" --seeds 0,1,2
T "TABLE7_ELPV_REV" "=$R/t_elpv_rev@source_only" "K-means=$R/t_elpv_rev_mmd@cluster_psi,all_target" "K-means, K=2=$R/e_k2_rev" "GMM=$R/e_gmm_rev" "MeanShift=$R/e_meanshift_rev" --seeds 0,1,2
T "FIG4" "2=$R/a_k2" "3=$R/t_mmd" "4=$R/a_k4" "5=$R/a_k5" "8=$R/a_k8" --methods cluster_psi --seeds 0 --plot docs/figures/uda_k_sweep.png --xlabel "K (K-means clusters on psi; MMD; seed 0)"
T "CONT" "5%=$R/t_cont0.05@source_only,all_target,oracle" "5%|K-means=$R/t_cont0.05@cluster_psi" "5%|GMM=$R/c_gmm0.05" "5%|MeanShift=$R/c_meanshift0.05" "10%=$R/t_main@source_only" "10%=$R/t_refs_mmd@all_target,oracle" "10%|K-means=$R/t_mmd@cluster_psi" "10%|GMM=$R/a_gmm" "10%|MeanShift=$R/a_meanshift" "20%=$R/t_cont0.2@source_only,all_target,oracle" "20%|K-means=$R/t_cont0.2@cluster_psi" "20%|GMM=$R/c_gmm0.2" "20%|MeanShift=$R/c_meanshift0.2" "30%=$R/t_cont0.3@source_only,all_target,oracle" "30%|K-means=$R/t_cont0.3@cluster_psi" "30%|GMM=$R/c_gmm0.3" "30%|MeanShift=$R/c_meanshift0.3" --targets cartoon --seeds 0,1,2 --plot docs/figures/uda_contamination.png --xlabel "anomalous share of the target train set (Photo -> Cartoon, MMD, seeds 0-2)"
T "CONT_K2" "5%|K-means=$R/t_cont0.05@cluster_psi" "5%|K-means K=2=$R/c_k20.05" "5%|GMM=$R/c_gmm0.05" "10%|K-means=$R/t_mmd@cluster_psi" "10%|K-means K=2=$R/a_k2" "10%|GMM=$R/a_gmm" "20%|K-means=$R/t_cont0.2@cluster_psi" "20%|K-means K=2=$R/c_k20.2" "20%|GMM=$R/c_gmm0.2" "30%|K-means=$R/t_cont0.3@cluster_psi" "30%|K-means K=2=$R/c_k20.3" "30%|GMM=$R/c_gmm0.3" --targets cartoon --seeds 0
T "DENOM" "as written (outside)=$R/con_neg" "as written, far 5%=$R/far05_neg" "as written, far 10%=$R/far10_neg" "InfoNCE (outside)=$R/con_nce" "InfoNCE, far 5%=$R/far05_nce" "InfoNCE, far 10% (default)=$R/far10_nce" "InfoNCE, far 20%=$R/far20" "InfoNCE, far 10%, sphere=$R/far10_sph" "InfoNCE, far 10%, K=2=$R/far10_k2" --methods cluster_psi --seeds 0
T "DENOM_3" "as written (outside)=$R/con_neg" "as written, far 5%=$R/far05_neg" "as written, far 10%=$R/far10_neg" "InfoNCE (outside)=$R/con_nce" "InfoNCE, far 5%=$R/far05_nce" "InfoNCE, far 10% (default)=$R/far10_nce" "InfoNCE, far 20%=$R/far20" "InfoNCE, far 10%, sphere=$R/far10_sph" "InfoNCE, far 10%, K=2=$R/far10_k2" --paired "InfoNCE, far 10% (default)"
T "TAULAMBDA" "tau 0.05, lambda 0.1=$R/far10_t005_l01" "tau 0.05, lambda 1=$R/far10_t005_l1" "tau 0.1, lambda 0.1=$R/far10_l01" "tau 0.1, lambda 1 (default)=$R/far10_nce" "tau 0.5, lambda 0.1=$R/far10_t05_l01" "tau 0.5, lambda 1=$R/far10_t05" --methods cluster_psi --seeds 0
T "ELPV" "contrastive=$R/t_elpv" "MMD=$R/t_elpv_mmd" "MMD, GMM (former default)=$R/e_gmm"
T "ELPV_REV" "contrastive=$R/t_elpv_rev" "MMD=$R/t_elpv_rev_mmd" "MMD, GMM (former default)=$R/e_gmm_rev"
T "ELPV_ABL" "=$R/t_elpv@source_only" "MMD=$R/t_elpv_mmd@all_target,oracle" "MMD=$R/e_abl" "MMD, K=3=$R/t_elpv_mmd@cluster_psi" "MMD, K=2=$R/e_k2" "MMD, K=4=$R/e_k4" "MMD, K=5=$R/e_k5" "MMD, K=8=$R/e_k8" "MMD, GMM=$R/e_gmm" "contrastive=$R/t_elpv@cluster_psi,oracle" "GRL=$R/e_grl" --seeds 0,1,2
T "ELPV_ABL_REV" "=$R/t_elpv_rev@source_only" "MMD=$R/t_elpv_rev_mmd@all_target,oracle" "MMD=$R/e_abl_rev" "MMD, K=3=$R/t_elpv_rev_mmd@cluster_psi" "MMD, K=2=$R/e_k2_rev" "MMD, K=4=$R/e_k4_rev" "MMD, K=5=$R/e_k5_rev" "MMD, K=8=$R/e_k8_rev" "MMD, GMM=$R/e_gmm_rev" "contrastive=$R/t_elpv_rev@cluster_psi,oracle" "GRL=$R/e_grl_rev" --seeds 0,1,2
T "ELPV_ABL_10" "MMD=$R/e_abl" "MMD, K=2=$R/e_k2" "MMD, K=4=$R/e_k4" "MMD, K=5=$R/e_k5" "MMD, K=8=$R/e_k8" "MMD, MeanShift=$R/e_meanshift" "GRL=$R/e_grl"
T "ELPV_ABL_REV_10" "MMD=$R/e_abl_rev" "MMD, K=2=$R/e_k2_rev" "MMD, K=4=$R/e_k4_rev" "MMD, K=5=$R/e_k5_rev" "MMD, K=8=$R/e_k8_rev" "MMD, MeanShift=$R/e_meanshift_rev" "GRL=$R/e_grl_rev"
T "TRIMMED" "trimmed (default), MMD=$R/a_trim" --methods cluster_psi --seeds 0,1,2
T "TRIMMED_ELPV" "trimmed, MMD=$R/e_trim" --seeds 0,1,2
T "TRIMMED_ELPV_REV" "trimmed, MMD=$R/e_trim_rev" --seeds 0,1,2
T "TRIMMED_CONT" "5%|trimmed=$R/c_trim0.05" "10%|trimmed=$R/a_trim" "20%|trimmed=$R/c_trim0.2" "30%|trimmed=$R/c_trim0.3" --targets cartoon --seeds 0,1,2
T "TABLE5_TRIMMED" "trimmed (default), MMD=$R/a_trim" --methods cluster_psi
T "ELPV_TRIMMED" "MMD, trimmed (default)=$R/e_trim" "MMD, trimmed (default), reverse=$R/e_trim_rev"
T "TABLE5_TRIMMED_CONTRASTIVE" "trimmed, contrastive=$R/t_trim_cont" "trimmed (default), MMD=$R/a_trim"
T "ELPV_TRIMMED_CONTRASTIVE" "contrastive, trimmed=$R/e_trim_cont" "contrastive, trimmed, reverse=$R/e_trim_cont_rev"
