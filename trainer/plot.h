// The loss-curve PNG a run writes beside its metrics: the raw loss as a thin line, a smoothed
// (debiased exponential moving average) line over it, axes with tick labels and a title.
#pragma once

#include <string>
#include <vector>

namespace mgm::trainer {

// Draws with OpenCV and writes `path` atomically (encoded in memory, then AtomicFileWriter).
// Non-finite losses are left out of the lines. Throws mgm::Error naming the path when the sizes
// of steps and losses differ, the image is smaller than 200x150, or the file cannot be written;
// built without OpenCV, always throws an error saying so.
void write_loss_plot(const std::string& path, const std::vector<double>& steps,
                     const std::vector<double>& losses, const std::string& title, int width = 960,
                     int height = 540);

// The smoothed curve the plot draws: TensorBoard's debiased EMA with weight `w` over the finite
// values (non-finite entries stay NaN and do not update the average).
std::vector<double> smooth_losses(const std::vector<double>& losses, double w = 0.9);

// "Nice" tick positions (1, 2 or 5 times a power of ten) covering [lo, hi], about `target` many.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

}  // namespace mgm::trainer
