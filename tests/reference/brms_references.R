# References computed with Stan through brms, for tests that compare the service with R.
#
#   Rscript tests/reference/brms_references.R   (from the project root; needs Debian's
#   r-cran-brms and r-cran-loo; about 5 minutes, most of it compiling the Stan models)
#
# 1. radon_mn_correlated: log_radon ~ floor_measure + (1 + floor_measure | county) on
#    posteriordb's radon_mn data (919 homes, 85 counties), the varying intercept and slope
#    CORRELATED (multivariate normal, LKJ(1) on the correlation), with explicit priors that
#    the service's request states exactly:
#      Intercept, floor_measure ~ Normal(0, 10)   (an uncentred intercept: `0 + Intercept`)
#      both county SDs, sigma   ~ HalfNormal(1)
#      correlation              ~ LKJ(eta = 1)
# 2. seed_loo: the seed study (484 students, 20 schools), score ~ (1 | school) with
#      Intercept ~ Normal(0, 20), school SD and sigma ~ HalfNormal(10);
#    R's loo (PSIS-LOO) of that fit: elpd_loo, p_loo, looic and their SEs.
# Written to tests/data/reference/*.reference.json in the format of the shared references.

suppressMessages({
  library(brms)
  library(loo)
  library(jsonlite)
})
options(mc.cores = 2)
out_dir <- "tests/data/reference"
seed <- 4711

summarise <- function(draws, bambi) {
  list(mean = mean(draws), sd = sd(draws), ess = posterior::ess_bulk(draws),
       rhat = posterior::rhat(draws), bambi = bambi)
}

# ---------------------------------------------------------------- correlated radon
radon <- as.data.frame(fromJSON(file.path(out_dir, "radon_mn_variable_intercept_slope.data.json"))$columns)
radon$county <- factor(radon$county_idx)
priors <- c(
  prior(normal(0, 10), class = b),
  prior(normal(0, 1), class = sd),
  prior(normal(0, 1), class = sigma),
  prior(lkj(1), class = cor)
)
fit <- brm(
  bf(log_radon ~ 0 + Intercept + floor_measure + (1 + floor_measure | county)),
  data = radon, prior = priors, chains = 4, iter = 6000, warmup = 1000,
  control = list(adapt_delta = 0.95), seed = seed, refresh = 0
)
d <- as_draws_df(fit)
params <- list(
  mu_alpha = summarise(d$b_Intercept, "Intercept"),
  mu_beta = summarise(d$b_floor_measure, "floor_measure"),
  sigma_alpha = summarise(d$sd_county__Intercept, "1|county_sigma"),
  sigma_beta = summarise(d$sd_county__floor_measure, "floor_measure|county_sigma"),
  rho = summarise(d$cor_county__Intercept__floor_measure, "1|county:floor_measure|county_corr"),
  sigma_y = summarise(d$sigma, "sigma")
)
for (j in c(1, 2, 14, 26, 36, 50, 61, 70, 85)) {
  a <- d$b_Intercept + d[[sprintf("r_county[%d,Intercept]", j)]]
  b <- d$b_floor_measure + d[[sprintf("r_county[%d,floor_measure]", j)]]
  params[[sprintf("alpha[%d]", j)]] <- summarise(a, sprintf("Intercept + 1|county[%d]", j))
  params[[sprintf("beta[%d]", j)]] <- summarise(b, sprintf("floor_measure + floor_measure|county[%d]", j))
}
div <- sum(nuts_params(fit)$Value[nuts_params(fit)$Parameter == "divergent__"])
write_json(list(
  posterior = "radon_mn_correlated",
  tier = "computed for this project with brms (Stan)",
  source = "tests/reference/brms_references.R",
  method = sprintf("brms %s, rstan %s; 4 chains x 5000 draws after 1000 warmup, adapt_delta 0.95, seed %d; %d divergent",
                   packageVersion("brms"), packageVersion("rstan"), seed, div),
  n_draws = nrow(d), n_chains = 4, params = params
), file.path(out_dir, "radon_mn_correlated.reference.json"), auto_unbox = TRUE, digits = NA, pretty = TRUE)

# ---------------------------------------------------------------------- seed LOO
students <- read.csv("data/seed_students.csv")
students$school <- factor(students$school)
seed_fit <- brm(
  bf(score ~ 0 + Intercept + (1 | school)), data = students,
  prior = c(prior(normal(0, 20), class = b), prior(normal(0, 10), class = sd),
            prior(normal(0, 10), class = sigma)),
  chains = 4, iter = 5000, warmup = 1000, seed = seed, refresh = 0
)
ll <- log_lik(seed_fit)
chain_id <- rep(1:4, each = nrow(ll) / 4)
r_eff <- relative_eff(exp(ll), chain_id = chain_id)
result <- loo(ll, r_eff = r_eff)
est <- result$estimates
write_json(list(
  posterior = "seed_loo",
  source = "tests/reference/brms_references.R",
  method = sprintf("brms %s, loo %s; 4 chains x 4000 draws, seed %d; r_eff per row",
                   packageVersion("brms"), packageVersion("loo"), seed),
  elpd_loo = est["elpd_loo", "Estimate"], elpd_loo_se = est["elpd_loo", "SE"],
  p_loo = est["p_loo", "Estimate"], p_loo_se = est["p_loo", "SE"],
  looic = est["looic", "Estimate"],
  pareto_k_max = max(result$diagnostics$pareto_k)
), file.path(out_dir, "seed_loo.reference.json"), auto_unbox = TRUE, digits = NA, pretty = TRUE)
cat("written\n")
