# References computed with rstanarm's stan_glmer AT ITS DEFAULT PRIORS, for the tests of
# `prior_defaults: "rstanarm"` (a user moving from stan_glmer gets the same posterior).
#
#   Rscript tests/reference/rstanarm_references.R   (from the project root; needs Debian's
#   r-cran-rstanarm, which brings lme4; about 3 minutes: rstanarm's models are precompiled)
#
# 1. rstanarm_radon_gaussian: log_radon ~ floor_measure + (1 | county) on posteriordb's
#    radon_mn data (919 homes, 85 counties): gaussian, a binary predictor (autoscaled prior),
#    sigma ~ exponential(1 / sd(y)), decov: the county SD is sigma * tau, tau ~ Gamma(1, 1).
# 2. rstanarm_cbpp_binomial: cbind(incidence, size - incidence) ~ period + (1 | herd) on
#    lme4's cbpp (56 herd-periods, 15 herds): binomial logit with a categorical predictor
#    (three dummies, each prior autoscaled by its own sd), the herd SD ~ Gamma(1, 1).
# 3. rstanarm_radon_slopes: log_radon ~ floor_measure + (1 + floor_measure | county):
#    decov of a 2 x 2 covariance: SDs sigma * tau * sqrt(2 * pi), pi ~ Dirichlet(1, 1),
#    correlation ~ LKJ(1).
# Each with 4 chains x 4000 draws after 1000 warmup at rstanarm's adapt_delta (0.95);
# written to tests/data/reference/*.reference.json in the format of the shared references,
# with the adjusted priors prior_summary() reports (the tests check the service's own).

suppressMessages({
  library(rstanarm)
  library(jsonlite)
})
options(mc.cores = 2)
out_dir <- "tests/data/reference"
seed <- 4711

summarise <- function(draws, bambi) {
  list(mean = mean(draws), sd = sd(draws), ess = posterior::ess_bulk(draws),
       rhat = posterior::rhat(draws), bambi = bambi)
}

adjusted <- function(fit) {
  p <- prior_summary(fit)
  list(
    intercept = list(location = p$prior_intercept$location,
                     scale = p$prior_intercept$adjusted_scale %||% p$prior_intercept$scale),
    coefficients = list(location = p$prior$location,
                        scale = p$prior$adjusted_scale %||% p$prior$scale),
    aux_rate = if (is.null(p$prior_aux)) NULL else
      p$prior_aux$rate / (p$prior_aux$adjusted_scale %||% 1)
  )
}
`%||%` <- function(a, b) if (is.null(a)) b else a

write_reference <- function(name, fit, params, note) {
  d <- as.data.frame(fit)
  div <- sum(sapply(rstan::get_sampler_params(fit$stanfit, inc_warmup = FALSE),
                    function(x) sum(x[, "divergent__"])))
  write_json(list(
    posterior = name,
    tier = "computed for this project with rstanarm (Stan) at its default priors",
    source = "tests/reference/rstanarm_references.R",
    method = sprintf("rstanarm %s; 4 chains x 4000 draws after 1000 warmup, adapt_delta %s, seed %d; %d divergent",
                     packageVersion("rstanarm"), fit$stan_args$control$adapt_delta %||% 0.95, seed, div),
    note = note, priors = adjusted(fit),
    n_draws = nrow(d), n_chains = 4, params = params
  ), file.path(out_dir, paste0(name, ".reference.json")), auto_unbox = TRUE, digits = NA, pretty = TRUE)
}

fit_args <- list(chains = 4, iter = 5000, warmup = 1000, seed = seed, refresh = 0)

# ------------------------------------------------------------------ 1. radon gaussian
radon <- as.data.frame(fromJSON(file.path(out_dir, "radon_mn_variable_intercept_slope.data.json"))$columns)
radon$county <- factor(radon$county_idx)
fit <- do.call(stan_glmer, c(list(log_radon ~ floor_measure + (1 | county), data = radon), fit_args))
d <- as.data.frame(fit)
params <- list(
  Intercept = summarise(d[["(Intercept)"]], "Intercept"),
  floor_measure = summarise(d$floor_measure, "floor_measure"),
  sigma = summarise(d$sigma, "sigma"),
  sigma_county = summarise(sqrt(d[["Sigma[county:(Intercept),(Intercept)]"]]), "1|county_sigma")
)
for (j in c(1, 2, 14, 26, 36, 50, 61, 70, 85)) {
  params[[sprintf("b[%d]", j)]] <- summarise(
    d[[sprintf("b[(Intercept) county:%d]", j)]], sprintf("1|county[%d]", j))
}
write_reference("rstanarm_radon_gaussian", fit, params,
                "log_radon ~ floor_measure + (1 | county), rstanarm's default priors")

# ------------------------------------------------------------------ 2. cbpp binomial
cbpp <- lme4::cbpp
write_json(list(
  columns = list(incidence = cbpp$incidence, size = cbpp$size,
                 period = as.character(cbpp$period), herd = as.character(cbpp$herd)),
  note = "lme4's cbpp: contagious bovine pleuropneumonia, 15 herds x 4 periods (one herd 3)"
), file.path(out_dir, "cbpp.data.json"), auto_unbox = FALSE, digits = NA)
fit <- do.call(stan_glmer, c(list(cbind(incidence, size - incidence) ~ period + (1 | herd),
                                  data = cbpp, family = binomial), fit_args))
d <- as.data.frame(fit)
params <- list(
  Intercept = summarise(d[["(Intercept)"]], "Intercept"),
  period2 = summarise(d$period2, "period[2]"),
  period3 = summarise(d$period3, "period[3]"),
  period4 = summarise(d$period4, "period[4]"),
  sigma_herd = summarise(sqrt(d[["Sigma[herd:(Intercept),(Intercept)]"]]), "1|herd_sigma")
)
for (j in c(1, 5, 8, 15)) {
  params[[sprintf("b[%d]", j)]] <- summarise(
    d[[sprintf("b[(Intercept) herd:%d]", j)]], sprintf("1|herd[%d]", j))
}
write_reference("rstanarm_cbpp_binomial", fit, params,
                "cbind(incidence, size - incidence) ~ period + (1 | herd), binomial, rstanarm's default priors")

# ------------------------------------------------------------------ 3. radon slopes
fit <- do.call(stan_glmer, c(list(log_radon ~ floor_measure + (1 + floor_measure | county),
                                  data = radon), fit_args))
d <- as.data.frame(fit)
v1 <- d[["Sigma[county:(Intercept),(Intercept)]"]]
v2 <- d[["Sigma[county:floor_measure,floor_measure]"]]
c12 <- d[["Sigma[county:floor_measure,(Intercept)]"]]
params <- list(
  Intercept = summarise(d[["(Intercept)"]], "Intercept"),
  floor_measure = summarise(d$floor_measure, "floor_measure"),
  sigma = summarise(d$sigma, "sigma"),
  sigma_county = summarise(sqrt(v1), "1|county_sigma"),
  sigma_slope = summarise(sqrt(v2), "floor_measure|county_sigma"),
  rho = summarise(c12 / sqrt(v1 * v2), "1|county:floor_measure|county_corr")
)
write_reference("rstanarm_radon_slopes", fit, params,
                "log_radon ~ floor_measure + (1 + floor_measure | county), rstanarm's default priors")
cat("written\n")
